package main

import (
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/topics"
)

// OrderSaga is the order saga's state: what the steps' commands need.
type OrderSaga struct {
	OrderID  string `json:"orderId"`
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
	Amount   int64  `json:"amount"`
	Card     string `json:"card"`
}

// Topics are the example's topics in one context.
type Topics struct {
	Context   string
	Orders    string // the order aggregate's commands
	Payments  string // the payment aggregate's commands
	Inventory string // the inventory aggregate's commands
	Events    string // every aggregate's events (the relay)
	Outcomes  string // every command's outcome
	SagaType  string // the saga type: its inbox is <type>.saga-inbox
}

// NewTopics returns the topics of context ctx.
func NewTopics(ctx string) Topics {
	return Topics{Context: ctx,
		Orders: topics.Commands(ctx + ".orders"), Payments: topics.Commands(ctx + ".payments"), Inventory: topics.Commands(ctx + ".inventory"),
		Events: topics.Events(ctx), Outcomes: topics.Outcomes(ctx), SagaType: ctx + ".order"}
}

// Timing is how long the saga's steps wait.
type Timing struct {
	// Step bounds the wait for each step's outcome (the payment-timeout
	// scenario's durable timer).
	Step time.Duration
	// Compensation bounds the wait for each compensation's outcome.
	Compensation time.Duration
	// Backoff is the wait before a retry after a rejection (doubled).
	Backoff time.Duration
}

// DefineOrderSaga returns the order saga: it starts on OrderPlaced and
// drives the order, the payment and the inventory:
//
//	0 begin-payment      order → PaymentAuthorizing    undo: cancel the order
//	1 capture-payment    payment captured              undo: refund
//	2 payment-authorized order → PaymentAuthorized     undo: order → Compensating
//	3 begin-reservation  order → InventoryReserving
//	4 reserve-stock      stock reserved                undo: release
//	5 confirm            order → Confirmed (the pivot: never undone)
//
// A declined card (step 1) cancels the order; a missing stock (step 4)
// refunds the payment and cancels the order; a payment that does not
// answer within Timing.Step is retried once, then refunded as "maybe
// captured" (the refund of a payment never captured is a no-op and
// closes it). Every compensation is retried 4 times, then the instance
// stops in compensation_failed until an operator retries it.
func DefineOrderSaga(t Topics, tm Timing) (*sagas.Definition[OrderSaga], error) {
	order := func(p any) func(OrderSaga) (sagas.Command, error) {
		return func(s OrderSaga) (sagas.Command, error) {
			return sagas.Command{Topic: t.Orders, AggregateID: s.OrderID, Payload: p}, nil
		}
	}
	retry := sagas.Retry(tm.Backoff, 3)
	return sagas.Define(t.SagaType, 1, []sagas.Step[OrderSaga]{
		{Name: "begin-payment", Action: order(StartPayment{}), Compensation: order(CancelOrder{}), Timeout: 10 * tm.Step, Policy: retry},
		{Name: "capture-payment",
			Action: func(s OrderSaga) (sagas.Command, error) {
				return sagas.Command{Topic: t.Payments, AggregateID: PaymentID(s.OrderID), Payload: CapturePayment{OrderID: s.OrderID, Amount: s.Amount, Card: s.Card}}, nil
			},
			Compensation: func(s OrderSaga) (sagas.Command, error) {
				return sagas.Command{Topic: t.Payments, AggregateID: PaymentID(s.OrderID), Payload: RefundPayment{OrderID: s.OrderID}}, nil
			},
			Timeout: tm.Step, Policy: sagas.Retry(tm.Backoff, 2)},
		{Name: "payment-authorized", Action: order(MarkPaymentAuthorized{}), Compensation: order(StartCompensation{}), Timeout: 10 * tm.Step, Policy: retry},
		{Name: "begin-reservation", Action: order(StartReservation{}), Timeout: 10 * tm.Step, Policy: retry},
		{Name: "reserve-stock",
			Action: func(s OrderSaga) (sagas.Command, error) {
				return sagas.Command{Topic: t.Inventory, AggregateID: StockID(s.SKU), Payload: ReserveStock{OrderID: s.OrderID, Quantity: s.Quantity}}, nil
			},
			Compensation: func(s OrderSaga) (sagas.Command, error) {
				return sagas.Command{Topic: t.Inventory, AggregateID: StockID(s.SKU), Payload: ReleaseStock{OrderID: s.OrderID}}, nil
			},
			Timeout: 10 * tm.Step},
		{Name: "confirm", Action: order(ConfirmOrder{}), Timeout: 10 * tm.Step, Policy: sagas.Pivot(tm.Backoff, 30*time.Second)},
	},
		sagas.CompensationPolicy[OrderSaga](sagas.Retry(tm.Backoff, 4), tm.Compensation),
		sagas.StartOn(TypeOrderPlaced, func(e orchestrix.Event) (string, OrderSaga, bool) {
			p, ok := e.Payload.(OrderPlaced)
			if !ok {
				return "", OrderSaga{}, false
			}
			return p.OrderID, OrderSaga{OrderID: p.OrderID, SKU: p.SKU, Quantity: p.Quantity, Amount: p.Amount, Card: p.Card}, true
		}),
	)
}
