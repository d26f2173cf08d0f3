package main

import (
	"errors"
	"testing"

	"github.com/orchestrix/orchestrix"
)

func cmd(p any) orchestrix.Command { return orchestrix.Command{AggregateID: "o-1", Payload: p} }

// The order's state machine: each command from each state either moves
// the order (one event), repeats a move already made (no event), or is
// refused with bad_state.
func TestOrderStateMachine(t *testing.T) {
	place := PlaceOrder{Customer: "ann", SKU: "w", Quantity: 1, Amount: 100, Card: "4242"}
	all := []string{"", StatePending, StateRejected, StatePaymentAuthorizing, StatePaymentAuthorized, StateInventoryReserving,
		StateConfirmed, StateCompensating, StateCancelled, StateFailed}
	type moves map[string]string // from → to ("=": no event; missing: refused)
	for _, tc := range []struct {
		name string
		cmd  any
		ok   moves
	}{
		{"place", place, moves{"": StatePending}},
		{"place over the limit", PlaceOrder{Customer: "ann", SKU: "w", Quantity: MaxQuantity + 1, Amount: 100, Card: "4242"}, moves{"": StateRejected}},
		{"start payment", StartPayment{}, moves{StatePending: StatePaymentAuthorizing, StatePaymentAuthorizing: "="}},
		{"payment authorized", MarkPaymentAuthorized{}, moves{StatePaymentAuthorizing: StatePaymentAuthorized, StatePaymentAuthorized: "="}},
		{"start reservation", StartReservation{}, moves{StatePaymentAuthorized: StateInventoryReserving, StateInventoryReserving: "="}},
		{"confirm", ConfirmOrder{}, moves{StateInventoryReserving: StateConfirmed, StateConfirmed: "="}},
		{"start compensation", StartCompensation{}, moves{StatePaymentAuthorized: StateCompensating, StateInventoryReserving: StateCompensating, StateCompensating: "="}},
		{"cancel", CancelOrder{}, moves{StatePending: StateCancelled, StatePaymentAuthorizing: StateCancelled, StateCompensating: StateCancelled,
			StateFailed: StateCancelled, StateCancelled: "="}},
		{"mark failed", MarkOrderFailed{Reason: "refund failed"}, moves{StatePaymentAuthorizing: StateFailed, StateCompensating: StateFailed, StateFailed: "="}},
	} {
		for _, from := range all {
			o := Order{Status: from}
			evs, err := DecideOrder(o, cmd(tc.cmd))
			want, ok := tc.ok[from]
			switch {
			case !ok:
				if !errors.Is(err, orchestrix.ErrRejected) || len(evs) > 0 {
					t.Errorf("%s from %q: %v %v, want refused", tc.name, from, evs, err)
				}
			case want == "=":
				if err != nil || len(evs) > 0 {
					t.Errorf("%s from %q: %v %v, want no event", tc.name, from, evs, err)
				}
			default:
				if err != nil || len(evs) != 1 {
					t.Fatalf("%s from %q: %v %v, want one event", tc.name, from, evs, err)
				}
				if got := EvolveOrder(o, orchestrix.Event{Payload: evs[0]}).Status; got != want {
					t.Errorf("%s from %q: to %q, want %q", tc.name, from, got, want)
				}
			}
		}
	}
}

func TestPaymentAndStock(t *testing.T) {
	gw := &Gateway{}
	decide := DecidePayment(gw)
	// A declined card; a refund of nothing closes the payment against a
	// late capture; a refund while the gateway is down is refused.
	if _, err := decide(Payment{}, cmd(CapturePayment{OrderID: "o", Amount: 5, Card: DeclinedCard})); !errors.Is(err, orchestrix.ErrRejected) {
		t.Errorf("declined card: %v", err)
	}
	evs, err := decide(Payment{}, cmd(RefundPayment{OrderID: "o"}))
	if err != nil || len(evs) != 1 || evs[0].(PaymentRefunded).Amount != 0 {
		t.Fatalf("refund of nothing: %v %v", evs, err)
	}
	voided := EvolvePayment(Payment{}, orchestrix.Event{Payload: evs[0]})
	if _, err := decide(voided, cmd(CapturePayment{OrderID: "o", Amount: 5, Card: "4242"})); !errors.Is(err, orchestrix.ErrRejected) {
		t.Errorf("capture after a void: %v", err)
	}
	captured := EvolvePayment(Payment{}, orchestrix.Event{Payload: PaymentCaptured{OrderID: "o", Amount: 5}})
	gw.SetRefundsDown(true)
	if _, err := decide(captured, cmd(RefundPayment{OrderID: "o"})); !errors.Is(err, orchestrix.ErrRejected) {
		t.Errorf("refund while down: %v", err)
	}
	gw.SetRefundsDown(false)
	if evs, err := decide(captured, cmd(RefundPayment{OrderID: "o"})); err != nil || evs[0].(PaymentRefunded).Amount != 5 {
		t.Errorf("refund: %v %v", evs, err)
	}

	s := EvolveStock(Stock{}, orchestrix.Event{Payload: StockAdded{Quantity: 2}})
	if _, err := DecideStock(s, cmd(ReserveStock{OrderID: "a", Quantity: 3})); !errors.Is(err, orchestrix.ErrRejected) {
		t.Errorf("reserve more than available: %v", err)
	}
	if evs, _ := DecideStock(s, cmd(ReleaseStock{OrderID: "a"})); len(evs) != 0 {
		t.Errorf("release without a reservation: %v", evs)
	}
	evs, _ = DecideStock(s, cmd(ReserveStock{OrderID: "a", Quantity: 2}))
	r := EvolveStock(s, orchestrix.Event{Payload: evs[0]})
	if r.Available != 0 || s.Available != 2 {
		t.Errorf("after reserving: %d (before: %d, must be unchanged)", r.Available, s.Available)
	}
	evs, _ = DecideStock(r, cmd(ReleaseStock{OrderID: "a"}))
	rel := EvolveStock(r, orchestrix.Event{Payload: evs[0]})
	if again, _ := DecideStock(rel, cmd(ReleaseStock{OrderID: "a"})); rel.Available != 2 || len(again) != 0 {
		t.Errorf("release: %d, again %v", rel.Available, again)
	}
}
