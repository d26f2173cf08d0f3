package main

import (
	"fmt"
	"math/rand/v2"

	"github.com/orchestrix/orchestrix/sagas"
)

// scenarios and what each shows.
var scenarios = map[string]string{
	"happy":            "every order is paid, reserved and confirmed (and one order over the quantity limit is placed as Rejected: no saga)",
	"payment-declined": "a third of the cards are declined: those orders are cancelled, nothing to refund",
	"out-of-stock":     "the SKU has stock for half the orders: the others are refunded and cancelled",
	"payment-timeout":  "the payment service is down while the first orders wait for it: their durable timeouts fire, the late captures are refunded and the orders cancelled; orders placed once it is back are confirmed",
	"refund-down":      "out of stock for half the orders while the gateway refuses refunds: those sagas end compensation_failed (orders Failed); the gateway comes back, an operator retry (the code of `orchestrix sagas retry`) finishes them",
}

var scenarioNames = []string{"happy", "payment-declined", "out-of-stock", "payment-timeout", "refund-down"}

// expect is what one order must end as.
type expect struct {
	saga  []sagas.Status // acceptable final saga statuses (none: no saga)
	order []string       // acceptable final order states
	// interim are order states also accepted before the operator's
	// retry (refund-down: Failed).
	interim []string
}

// planned is one order the run places.
type planned struct {
	id     string
	cmd    PlaceOrder
	batch  int // 0: at once; 1: after the first batch ended
	expect expect
}

// planOrders returns the run's orders and the stock per SKU.
func planOrders(c config) ([]planned, map[string]int) {
	rng := rand.New(rand.NewPCG(c.seed, c.seed^0x9e3779b97f4a7c15))
	tag := tagOf(c.context)
	widget, limited := "widget-"+tag, "limited-"+tag
	stock := map[string]int{widget: 10 * c.orders * MaxQuantity}
	confirmed := expect{saga: []sagas.Status{sagas.StatusCompleted}, order: []string{StateConfirmed}}
	cancelled := expect{saga: []sagas.Status{sagas.StatusCompensated}, order: []string{StateCancelled}}
	var plan []planned
	add := func(i, batch int, sku string, qty int, card string, e expect) {
		id := fmt.Sprintf("o-%s-%04d", tag, i)
		plan = append(plan, planned{id: id, batch: batch, expect: e, cmd: PlaceOrder{Customer: fmt.Sprintf("customer-%d", rng.IntN(1000)),
			SKU: sku, Quantity: qty, Amount: int64(qty) * (500 + rng.Int64N(9500)), Card: card}})
	}
	good := "4242-4242-4242-4242"
	n := c.orders
	switch c.scenario {
	case "happy":
		for i := range n {
			add(i, 0, widget, 1+rng.IntN(3), good, confirmed)
		}
	case "payment-declined":
		declined := 0
		for i := range n {
			if rng.IntN(3) == 0 || (i == n-1 && declined == 0) {
				declined++
				add(i, 0, widget, 1+rng.IntN(3), DeclinedCard, cancelled)
				continue
			}
			add(i, 0, widget, 1+rng.IntN(3), good, confirmed)
		}
	case "out-of-stock", "refund-down":
		// Which orders get the stock is decided by the order the
		// reservations arrive in: any may be confirmed or cancelled; the
		// verdict checks that exactly the stock was sold.
		stock[limited] = n / 2
		either := expect{saga: []sagas.Status{sagas.StatusCompleted, sagas.StatusCompensated}, order: []string{StateConfirmed, StateCancelled}}
		if c.scenario == "refund-down" {
			either.interim = []string{StateFailed}
		}
		for i := range n {
			add(i, 0, limited, 1, good, either)
		}
	case "payment-timeout":
		half := max(1, n/2)
		for i := range n {
			if i < half {
				add(i, 0, widget, 1+rng.IntN(3), good, cancelled)
			} else {
				add(i, 1, widget, 1+rng.IntN(3), good, confirmed)
			}
		}
	}
	// Every run also places one order over the quantity limit: it is
	// placed as Rejected and starts no saga.
	add(n, 0, widget, MaxQuantity+1, good, expect{order: []string{StateRejected}})
	return plan, stock
}
