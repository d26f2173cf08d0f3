package main

import (
	"errors"
	"maps"
	"strings"
	"sync/atomic"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
)

// The order's nine states. An order starts Pending (or Rejected: a placed
// order that breaks a business rule never starts a saga), moves forward
// as the saga takes its steps, and ends Confirmed, Cancelled (every
// effect undone) or, while an undo failed and waits for an operator,
// Failed (which becomes Cancelled once the operator's retry finishes).
const (
	StatePending            = "Pending"
	StateRejected           = "Rejected"
	StatePaymentAuthorizing = "PaymentAuthorizing"
	StatePaymentAuthorized  = "PaymentAuthorized"
	StateInventoryReserving = "InventoryReserving"
	StateConfirmed          = "Confirmed"
	StateCompensating       = "Compensating"
	StateCancelled          = "Cancelled"
	StateFailed             = "Failed"
)

// MaxQuantity is the most items of one SKU an order may hold: a larger
// order is placed as Rejected.
const MaxQuantity = 10

// DeclinedCard is the card number the payment gateway always declines.
const DeclinedCard = "4000-0000-0000-0002"

// Order is the order aggregate's state.
type Order struct {
	Status   string `json:"status"`
	Customer string `json:"customer"`
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
	Amount   int64  `json:"amount"`
	Card     string `json:"card"`
	Reason   string `json:"reason,omitempty"`
}

// Payment is the payment aggregate's state (one per order, ID
// PaymentID(order)).
type Payment struct {
	// Status is "", "captured" or "refunded" (a refund of a payment never
	// captured leaves it "refunded" with nothing returned, so a late
	// capture is refused: the barrier of docs/sagas.md).
	Status  string `json:"status"`
	OrderID string `json:"orderId"`
	Amount  int64  `json:"amount"`
}

// Stock is the inventory aggregate's state (one per SKU, ID StockID(sku)).
type Stock struct {
	Available int             `json:"available"`
	Reserved  map[string]int  `json:"reserved,omitempty"` // by order
	Released  map[string]bool `json:"released,omitempty"`
}

// PaymentID is the payment aggregate of an order.
func PaymentID(orderID string) string { return "pay-" + orderID }

// StockID is the inventory aggregate of a SKU.
func StockID(sku string) string { return "sku-" + sku }

// Order commands.
type (
	// PlaceOrder places an order; a business rule it breaks places it as
	// Rejected.
	PlaceOrder struct {
		Customer string `json:"customer"`
		SKU      string `json:"sku"`
		Quantity int    `json:"quantity"`
		Amount   int64  `json:"amount"`
		Card     string `json:"card"`
	}
	// StartPayment moves a Pending order to PaymentAuthorizing.
	StartPayment struct{}
	// MarkPaymentAuthorized records the captured payment.
	MarkPaymentAuthorized struct{}
	// StartReservation moves the order to InventoryReserving.
	StartReservation struct{}
	// ConfirmOrder confirms the order.
	ConfirmOrder struct{}
	// StartCompensation moves an order whose saga undoes it to
	// Compensating.
	StartCompensation struct{}
	// CancelOrder ends an order whose effects were undone.
	CancelOrder struct{}
	// MarkOrderFailed records that undoing the order failed and waits for
	// an operator.
	MarkOrderFailed struct {
		Reason string `json:"reason"`
	}
)

// Payment and inventory commands.
type (
	// CapturePayment charges the order's card.
	CapturePayment struct {
		OrderID string `json:"orderId"`
		Amount  int64  `json:"amount"`
		Card    string `json:"card"`
	}
	// RefundPayment returns a captured payment (nothing when none was
	// captured).
	RefundPayment struct {
		OrderID string `json:"orderId"`
	}
	// AddStock adds items of a SKU.
	AddStock struct {
		Quantity int `json:"quantity"`
	}
	// ReserveStock reserves items for an order; refused when fewer are
	// available.
	ReserveStock struct {
		OrderID  string `json:"orderId"`
		Quantity int    `json:"quantity"`
	}
	// ReleaseStock returns an order's reservation (nothing when none).
	ReleaseStock struct {
		OrderID string `json:"orderId"`
	}
)

// The 14 domain events: nine of the order, two of the payment, three of
// the inventory.
type (
	// OrderPlaced starts an order (and its saga).
	OrderPlaced struct {
		OrderID  string `json:"orderId"`
		Customer string `json:"customer"`
		SKU      string `json:"sku"`
		Quantity int    `json:"quantity"`
		Amount   int64  `json:"amount"`
		Card     string `json:"card"`
	}
	// OrderRejected: the order broke a business rule when placed.
	OrderRejected struct {
		Reason string `json:"reason"`
	}
	// PaymentAuthorizationStarted: the saga asks for the payment.
	PaymentAuthorizationStarted struct{}
	// OrderPaymentAuthorized: the payment was captured.
	OrderPaymentAuthorized struct{}
	// InventoryReservationStarted: the saga asks for the stock.
	InventoryReservationStarted struct{}
	// OrderConfirmed: paid and reserved.
	OrderConfirmed struct{}
	// OrderCompensationStarted: the saga undoes the order.
	OrderCompensationStarted struct{}
	// OrderCancelled: every effect of the order was undone.
	OrderCancelled struct{}
	// OrderFailed: undoing the order failed; an operator acts.
	OrderFailed struct {
		Reason string `json:"reason"`
	}
	// PaymentCaptured: the card was charged.
	PaymentCaptured struct {
		OrderID string `json:"orderId"`
		Amount  int64  `json:"amount"`
	}
	// PaymentRefunded: the charge was returned (Amount 0: nothing had been
	// captured).
	PaymentRefunded struct {
		OrderID string `json:"orderId"`
		Amount  int64  `json:"amount"`
	}
	// StockAdded: items arrived.
	StockAdded struct {
		Quantity int `json:"quantity"`
	}
	// StockReserved: items were set aside for an order.
	StockReserved struct {
		OrderID  string `json:"orderId"`
		Quantity int    `json:"quantity"`
	}
	// StockReleased: an order's reservation was returned.
	StockReleased struct {
		OrderID  string `json:"orderId"`
		Quantity int    `json:"quantity"`
	}
)

// Type names (CloudEvents types) of the events the example checks.
const (
	TypeOrderPlaced     = "ecommerce.OrderPlaced"
	TypeOrderRejected   = "ecommerce.OrderRejected"
	TypeOrderConfirmed  = "ecommerce.OrderConfirmed"
	TypeOrderCancelled  = "ecommerce.OrderCancelled"
	TypeOrderFailed     = "ecommerce.OrderFailed"
	TypePaymentCaptured = "ecommerce.PaymentCaptured"
	TypePaymentRefunded = "ecommerce.PaymentRefunded"
	TypeStockAdded      = "ecommerce.StockAdded"
	TypeStockReserved   = "ecommerce.StockReserved"
	TypeStockReleased   = "ecommerce.StockReleased"
)

// Register adds the example's commands and events to reg as JSON.
func Register(reg *codec.Registry) error {
	return errors.Join(
		codec.RegisterJSON[PlaceOrder](reg, "ecommerce.PlaceOrder"),
		codec.RegisterJSON[StartPayment](reg, "ecommerce.StartPayment"),
		codec.RegisterJSON[MarkPaymentAuthorized](reg, "ecommerce.MarkPaymentAuthorized"),
		codec.RegisterJSON[StartReservation](reg, "ecommerce.StartReservation"),
		codec.RegisterJSON[ConfirmOrder](reg, "ecommerce.ConfirmOrder"),
		codec.RegisterJSON[StartCompensation](reg, "ecommerce.StartCompensation"),
		codec.RegisterJSON[CancelOrder](reg, "ecommerce.CancelOrder"),
		codec.RegisterJSON[MarkOrderFailed](reg, "ecommerce.MarkOrderFailed"),
		codec.RegisterJSON[CapturePayment](reg, "ecommerce.CapturePayment"),
		codec.RegisterJSON[RefundPayment](reg, "ecommerce.RefundPayment"),
		codec.RegisterJSON[AddStock](reg, "ecommerce.AddStock"),
		codec.RegisterJSON[ReserveStock](reg, "ecommerce.ReserveStock"),
		codec.RegisterJSON[ReleaseStock](reg, "ecommerce.ReleaseStock"),

		codec.RegisterJSON[OrderPlaced](reg, TypeOrderPlaced),
		codec.RegisterJSON[OrderRejected](reg, TypeOrderRejected),
		codec.RegisterJSON[PaymentAuthorizationStarted](reg, "ecommerce.PaymentAuthorizationStarted"),
		codec.RegisterJSON[OrderPaymentAuthorized](reg, "ecommerce.OrderPaymentAuthorized"),
		codec.RegisterJSON[InventoryReservationStarted](reg, "ecommerce.InventoryReservationStarted"),
		codec.RegisterJSON[OrderConfirmed](reg, TypeOrderConfirmed),
		codec.RegisterJSON[OrderCompensationStarted](reg, "ecommerce.OrderCompensationStarted"),
		codec.RegisterJSON[OrderCancelled](reg, TypeOrderCancelled),
		codec.RegisterJSON[OrderFailed](reg, TypeOrderFailed),
		codec.RegisterJSON[PaymentCaptured](reg, TypePaymentCaptured),
		codec.RegisterJSON[PaymentRefunded](reg, TypePaymentRefunded),
		codec.RegisterJSON[StockAdded](reg, TypeStockAdded),
		codec.RegisterJSON[StockReserved](reg, TypeStockReserved),
		codec.RegisterJSON[StockReleased](reg, TypeStockReleased),
	)
}

// Validate checks the shape of a placed order (a malformed command is
// refused; a well-formed one that breaks a business rule is placed as
// Rejected).
func (c PlaceOrder) Validate() error {
	var v orchestrix.Validation
	v.Check(c.Customer != "" && len(c.Customer) <= 100, "customer", "required", "customer is required, at most 100 bytes")
	v.Check(c.SKU != "" && len(c.SKU) <= 100, "sku", "required", "sku is required, at most 100 bytes")
	v.Check(c.Card != "" && len(c.Card) <= 40, "card", "required", "card is required, at most 40 bytes")
	return v.Err()
}

// Validate checks the quantity.
func (c AddStock) Validate() error {
	var v orchestrix.Validation
	v.Check(c.Quantity > 0 && c.Quantity <= 1_000_000, "quantity", "range", "quantity must be 1 to 1000000")
	return v.Err()
}

func badState(o Order, what string) error {
	return orchestrix.Reject("bad_state", what+" in state "+stateName(o.Status))
}

func stateName(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// DecideOrder is the order's decision function: its state machine.
func DecideOrder(o Order, c orchestrix.Command) ([]any, error) {
	switch cmd := c.Payload.(type) {
	case PlaceOrder:
		if o.Status != "" {
			return nil, orchestrix.Reject("already_placed", "order is already placed")
		}
		switch {
		case cmd.Quantity < 1 || cmd.Quantity > MaxQuantity:
			return []any{OrderRejected{Reason: "quantity must be 1 to 10"}}, nil
		case cmd.Amount <= 0 || cmd.Amount > 1_000_000_00:
			return []any{OrderRejected{Reason: "amount must be positive and at most 1,000,000.00"}}, nil
		}
		return []any{OrderPlaced{OrderID: c.AggregateID, Customer: cmd.Customer, SKU: cmd.SKU, Quantity: cmd.Quantity, Amount: cmd.Amount, Card: cmd.Card}}, nil
	case StartPayment:
		return move(o, StatePending, StatePaymentAuthorizing, "start payment", PaymentAuthorizationStarted{})
	case MarkPaymentAuthorized:
		return move(o, StatePaymentAuthorizing, StatePaymentAuthorized, "mark payment authorized", OrderPaymentAuthorized{})
	case StartReservation:
		return move(o, StatePaymentAuthorized, StateInventoryReserving, "start reservation", InventoryReservationStarted{})
	case ConfirmOrder:
		return move(o, StateInventoryReserving, StateConfirmed, "confirm", OrderConfirmed{})
	case StartCompensation:
		switch o.Status {
		case StateCompensating:
			return nil, nil
		case StatePaymentAuthorized, StateInventoryReserving:
			return []any{OrderCompensationStarted{}}, nil
		}
		return nil, badState(o, "start compensation")
	case CancelOrder:
		switch o.Status {
		case StateCancelled:
			return nil, nil
		case StatePending, StatePaymentAuthorizing, StateCompensating, StateFailed:
			return []any{OrderCancelled{}}, nil
		}
		return nil, badState(o, "cancel")
	case MarkOrderFailed:
		switch o.Status {
		case StateFailed:
			return nil, nil
		case StatePaymentAuthorizing, StateCompensating:
			return []any{OrderFailed(cmd)}, nil
		}
		return nil, badState(o, "mark failed")
	}
	return nil, orchestrix.Reject("unknown_command", "orders do not handle this command")
}

// move is one forward transition: from → to with event e; a repeat of a
// transition already made changes nothing.
func move(o Order, from, to, what string, e any) ([]any, error) {
	switch o.Status {
	case from:
		return []any{e}, nil
	case to:
		return nil, nil
	}
	return nil, badState(o, what)
}

// EvolveOrder folds one event into an order.
func EvolveOrder(o Order, e orchestrix.Event) Order {
	switch ev := e.Payload.(type) {
	case OrderPlaced:
		o = Order{Status: StatePending, Customer: ev.Customer, SKU: ev.SKU, Quantity: ev.Quantity, Amount: ev.Amount, Card: ev.Card}
	case OrderRejected:
		o.Status, o.Reason = StateRejected, ev.Reason
	case PaymentAuthorizationStarted:
		o.Status = StatePaymentAuthorizing
	case OrderPaymentAuthorized:
		o.Status = StatePaymentAuthorized
	case InventoryReservationStarted:
		o.Status = StateInventoryReserving
	case OrderConfirmed:
		o.Status = StateConfirmed
	case OrderCompensationStarted:
		o.Status = StateCompensating
	case OrderCancelled:
		o.Status = StateCancelled
	case OrderFailed:
		o.Status, o.Reason = StateFailed, ev.Reason
	}
	return o
}

// Gateway stands for the payment provider behind the payment aggregate:
// the refund-down scenario turns its refunds off until the operator's
// retry. It is safe for concurrent use; the zero value is up.
type Gateway struct {
	refundsDown atomic.Bool
}

// SetRefundsDown turns refunds off (true) or on.
func (g *Gateway) SetRefundsDown(down bool) { g.refundsDown.Store(down) }

// DecidePayment returns the payment's decision function over gw.
func DecidePayment(gw *Gateway) aggregates.DecideFunc[Payment] {
	return func(p Payment, c orchestrix.Command) ([]any, error) {
		switch cmd := c.Payload.(type) {
		case CapturePayment:
			switch p.Status {
			case "captured":
				return nil, nil
			case "refunded":
				return nil, orchestrix.Reject("closed", "payment was refunded or voided")
			}
			if cmd.Amount <= 0 {
				return nil, orchestrix.Reject("bad_amount", "amount must be positive")
			}
			if strings.TrimSpace(cmd.Card) == DeclinedCard {
				return nil, orchestrix.Reject("card_declined", "the card was declined")
			}
			return []any{PaymentCaptured{OrderID: cmd.OrderID, Amount: cmd.Amount}}, nil
		case RefundPayment:
			if p.Status == "refunded" {
				return nil, nil
			}
			if gw != nil && gw.refundsDown.Load() {
				return nil, orchestrix.Reject("gateway_down", "the payment gateway refuses refunds")
			}
			amount := int64(0)
			if p.Status == "captured" {
				amount = p.Amount
			}
			return []any{PaymentRefunded{OrderID: cmd.OrderID, Amount: amount}}, nil
		}
		return nil, orchestrix.Reject("unknown_command", "payments do not handle this command")
	}
}

// EvolvePayment folds one event into a payment.
func EvolvePayment(p Payment, e orchestrix.Event) Payment {
	switch ev := e.Payload.(type) {
	case PaymentCaptured:
		p.Status, p.OrderID, p.Amount = "captured", ev.OrderID, ev.Amount
	case PaymentRefunded:
		p.Status, p.OrderID = "refunded", ev.OrderID
	}
	return p
}

// DecideStock is the inventory's decision function: stock never goes
// below zero, a reservation is released once and only if it was made.
func DecideStock(s Stock, c orchestrix.Command) ([]any, error) {
	switch cmd := c.Payload.(type) {
	case AddStock:
		return []any{StockAdded(cmd)}, nil
	case ReserveStock:
		if _, ok := s.Reserved[cmd.OrderID]; ok {
			return nil, nil
		}
		if s.Released[cmd.OrderID] {
			return nil, orchestrix.Reject("released", "the order's reservation was released")
		}
		if cmd.Quantity < 1 {
			return nil, orchestrix.Reject("bad_quantity", "quantity must be positive")
		}
		if cmd.Quantity > s.Available {
			return nil, orchestrix.Reject("out_of_stock", "not enough items in stock")
		}
		return []any{StockReserved(cmd)}, nil
	case ReleaseStock:
		n, ok := s.Reserved[cmd.OrderID]
		if !ok || s.Released[cmd.OrderID] {
			return nil, nil
		}
		return []any{StockReleased{OrderID: cmd.OrderID, Quantity: n}}, nil
	}
	return nil, orchestrix.Reject("unknown_command", "inventory does not handle this command")
}

// EvolveStock folds one event into a SKU's stock.
func EvolveStock(s Stock, e orchestrix.Event) Stock {
	switch ev := e.Payload.(type) {
	case StockAdded:
		s.Available += ev.Quantity
	case StockReserved:
		// Maps are copied before a change: a cached state may be shared.
		s.Available -= ev.Quantity
		s.Reserved = maps.Clone(s.Reserved)
		if s.Reserved == nil {
			s.Reserved = map[string]int{}
		}
		s.Reserved[ev.OrderID] = ev.Quantity
	case StockReleased:
		s.Available += ev.Quantity
		s.Released = maps.Clone(s.Released)
		if s.Released == nil {
			s.Released = map[string]bool{}
		}
		s.Released[ev.OrderID] = true
	}
	return s
}
