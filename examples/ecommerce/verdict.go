package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// outcome of a run, for the verdict.
type verdictRow struct {
	name   string
	detail string
	ok     bool
}

// verdict checks the invariants against the stores.
func verdict(ctx context.Context, a *app, c config, plan []planned, stock map[string]int, retries int) ([]verdictRow, error) {
	var rows []verdictRow
	// Fold every event of the run from the event store, in log order.
	type payment struct{ captured, refunded int64 }
	level := map[string]int{}    // stock per SKU stream
	minLevel := map[string]int{} // lowest seen
	reserved := map[string]int{} // net reserved per order
	pays := map[string]*payment{}
	stockEvents, payEvents := 0, 0
	var cur stores.Cursor
	for {
		n := 0
		for e, err := range a.events.ReadAll(ctx, cur, 1000) {
			if err != nil {
				return nil, fmt.Errorf("read events: %w", err)
			}
			n++
			cur = e.Cursor
			ev := e.Event
			if err := a.reg.DecodeEvent(&ev); err != nil {
				return nil, err
			}
			switch p := ev.Payload.(type) {
			case StockAdded:
				level[ev.StreamID] += p.Quantity
				stockEvents++
			case StockReserved:
				level[ev.StreamID] -= p.Quantity
				reserved[p.OrderID] += p.Quantity
				stockEvents++
			case StockReleased:
				level[ev.StreamID] += p.Quantity
				reserved[p.OrderID] -= p.Quantity
				stockEvents++
			case PaymentCaptured:
				if pays[p.OrderID] == nil {
					pays[p.OrderID] = &payment{}
				}
				pays[p.OrderID].captured += p.Amount
				payEvents++
			case PaymentRefunded:
				if pays[p.OrderID] == nil {
					pays[p.OrderID] = &payment{}
				}
				pays[p.OrderID].refunded += p.Amount
				payEvents++
			}
			if l, ok := level[ev.StreamID]; ok && l < minLevel[ev.StreamID] {
				minLevel[ev.StreamID] = l
			}
		}
		if n < 1000 {
			break
		}
	}
	negative := []string{}
	for s, l := range minLevel {
		if l < 0 {
			negative = append(negative, fmt.Sprintf("%s went to %d", s, l))
		}
	}
	rows = append(rows, verdictRow{name: "stock never negative", ok: len(negative) == 0,
		detail: orDetail(negative, fmt.Sprintf("%d SKUs, %d stock events folded in log order", len(level), stockEvents))})

	// Orders and sagas.
	states := map[string]string{}
	var wrongOrder, wrongSaga, wrongPay, wrongStock []string
	counts := map[string]int{}
	sagaCounts := map[sagas.Status]int{}
	for _, p := range plan {
		o, err := a.orderRepo.Load(ctx, p.id)
		if err != nil {
			return nil, err
		}
		st := o.State.Status
		states[p.id] = st
		counts[st]++
		if !slices.Contains(p.expect.order, st) {
			wrongOrder = append(wrongOrder, fmt.Sprintf("%s is %s, want %v", p.id, stateName(st), p.expect.order))
		}
		inst, err := a.sagaStore.Get(ctx, a.cfg.topics.SagaType, p.id)
		switch {
		case len(p.expect.saga) == 0:
			if err == nil {
				wrongSaga = append(wrongSaga, fmt.Sprintf("%s started a saga", p.id))
			}
		case err != nil:
			wrongSaga = append(wrongSaga, fmt.Sprintf("%s: %v", p.id, err))
		default:
			sagaCounts[inst.Status]++
			if !slices.Contains(p.expect.saga, inst.Status) {
				wrongSaga = append(wrongSaga, fmt.Sprintf("%s is %s, want %v", p.id, inst.Status, p.expect.saga))
			}
			if c.scenario == "refund-down" && inst.Status == sagas.StatusCompensated {
				h, err := a.sagaStore.History(ctx, a.cfg.topics.SagaType, p.id)
				if err != nil {
					return nil, err
				}
				if !slices.ContainsFunc(h, func(t sagas.Transition) bool { return t.To == sagas.StatusCompensationFailed }) ||
					!slices.ContainsFunc(h, func(t sagas.Transition) bool { return t.InputKind == sagas.KindRetry }) {
					wrongSaga = append(wrongSaga, fmt.Sprintf("%s compensated without passing compensation_failed and a retry", p.id))
				}
			}
		}
		// Money: a confirmed order keeps its payment; any other order
		// was never charged or was refunded in full.
		pay := pays[p.id]
		if pay == nil {
			pay = &payment{}
		}
		switch {
		case st == StateConfirmed && (pay.captured != p.cmd.Amount || pay.refunded != 0):
			wrongPay = append(wrongPay, fmt.Sprintf("confirmed %s: captured %d, refunded %d, amount %d", p.id, pay.captured, pay.refunded, p.cmd.Amount))
		case st != StateConfirmed && pay.captured != pay.refunded:
			wrongPay = append(wrongPay, fmt.Sprintf("%s %s: captured %d, refunded %d", stateName(st), p.id, pay.captured, pay.refunded))
		}
		// Stock: a confirmed order holds its reservation; any other none.
		want := 0
		if st == StateConfirmed {
			want = p.cmd.Quantity
		}
		if reserved[p.id] != want {
			wrongStock = append(wrongStock, fmt.Sprintf("%s %s holds %d items", stateName(st), p.id, reserved[p.id]))
		}
	}
	captured, refundedN := 0, 0
	for _, p := range pays {
		if p.captured > 0 {
			captured++
		}
		if p.refunded > 0 {
			refundedN++
		}
	}
	rows = append(rows, verdictRow{name: "every captured payment: confirmed order or refunded", ok: len(wrongPay) == 0,
		detail: orDetail(wrongPay, fmt.Sprintf("%d captured, %d refunded, %d orders confirmed", captured, refundedN, counts[StateConfirmed]))})
	rows = append(rows, verdictRow{name: "reservations held by confirmed orders only", ok: len(wrongStock) == 0,
		detail: orDetail(wrongStock, "every other reservation released")})
	var sagaSummary []string
	for _, s := range []sagas.Status{sagas.StatusCompleted, sagas.StatusCompensated, sagas.StatusCompensationFailed, sagas.StatusCompensating, sagas.StatusRunning} {
		if sagaCounts[s] > 0 {
			sagaSummary = append(sagaSummary, fmt.Sprintf("%d %s", sagaCounts[s], s))
		}
	}
	if retries > 0 {
		sagaSummary = append(sagaSummary, fmt.Sprintf("%d retried by the operator", retries))
	}
	rows = append(rows, verdictRow{name: "every saga ended in an expected status", ok: len(wrongSaga) == 0,
		detail: orDetail(wrongSaga, strings.Join(sagaSummary, ", "))})
	var orderSummary []string
	for _, s := range []string{StateConfirmed, StateCancelled, StateRejected, StateFailed} {
		if counts[s] > 0 {
			orderSummary = append(orderSummary, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	rows = append(rows, verdictRow{name: "every order ended in an expected state", ok: len(wrongOrder) == 0,
		detail: orDetail(wrongOrder, strings.Join(orderSummary, ", "))})
	if c.scenario == "out-of-stock" || c.scenario == "refund-down" {
		limited := "limited-" + tagOf(c.context)
		rows = append(rows, verdictRow{name: "the limited stock sold out exactly", ok: counts[StateConfirmed] == stock[limited],
			detail: fmt.Sprintf("%d confirmed for a stock of %d", counts[StateConfirmed], stock[limited])})
	}
	if c.scenario == "refund-down" {
		rows = append(rows, verdictRow{name: "the refunds that failed were retried and finished", ok: retries == len(plan)-1-stock["limited-"+tagOf(c.context)],
			detail: fmt.Sprintf("%d sagas in compensation_failed retried", retries)})
	}
	// Dead letters: none expected.
	// Dead letters: exactly the poison record, in the orders group's.
	dlqs := deadLetterTopics(a.cfg.topics)
	poison, err := countRecords(ctx, a.client, dlqs[:1])
	if err != nil {
		return nil, err
	}
	others, err := countRecords(ctx, a.client, dlqs[1:])
	if err != nil {
		return nil, err
	}
	rows = append(rows, verdictRow{name: "only the bad record dead-lettered", ok: poison == 1 && others == 0,
		detail: fmt.Sprintf("%d in %s (want 1), %d in the other dead-letter topics", poison, dlqs[0], others)})
	return rows, nil
}

func orDetail(problems []string, fine string) string {
	if len(problems) == 0 {
		return fine
	}
	sort.Strings(problems)
	if len(problems) > 5 {
		problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
	}
	return strings.Join(problems, "; ")
}

// countRecords sums the records in topics (end minus start offsets).
func countRecords(ctx context.Context, cl *kgo.Client, names []string) (int64, error) {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return 0, err
	}
	starts, err := adm.ListStartOffsets(ctx, names...)
	if err != nil {
		return 0, err
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if s, ok := starts.Lookup(o.Topic, o.Partition); ok {
			n += o.Offset - s.Offset
		}
	})
	return n, nil
}

// printVerdict prints the table and returns an error when a row failed.
func printVerdict(w io.Writer, rows []verdictRow, elapsed time.Duration) error {
	fmt.Fprintf(w, "\nverdict (%.1fs)\n", elapsed.Seconds())
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  INVARIANT\tRESULT\tDETAIL")
	bad := 0
	for _, r := range rows {
		res := "ok"
		if !r.ok {
			res, bad = "VIOLATED", bad+1
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r.name, res, r.detail)
	}
	_ = tw.Flush()
	if bad > 0 {
		return fmt.Errorf("%d of %d invariants violated", bad, len(rows))
	}
	fmt.Fprintf(w, "all %d invariants hold\n", len(rows))
	return nil
}
