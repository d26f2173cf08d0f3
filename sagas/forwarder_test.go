package sagas

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestForwarder: outcomes and events correlated to a served saga type
// reach its inbox keyed by saga ID (events only of a type it reacts to,
// with their CloudEvents headers, so the runtime folds them into the
// state); others are skipped; unreadable ones fail permanently.
func TestForwarder(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	cl := testenv.Client(t, seeds, kgo.ProducerLinger(0))
	ctx := t.Context()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "transfer.saga-inbox"); err != nil {
		t.Fatal(err)
	}
	reg := codec.NewRegistry()
	if err := codec.RegisterJSON[debit](reg, "t.Debit"); err != nil {
		t.Fatal(err)
	}
	store := NewMemoryStore()
	d := testDef(t, OnEvent("bank.Debited", func(x xfer, e orchestrix.Event) (xfer, error) {
		x.Note = "saw " + e.ID
		return x, nil
	}))
	rt, err := NewRuntime(store, reg, []Saga{d})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(ctx, "s1", xfer{From: "a", To: "b", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	f, err := NewForwarder(cl, "bank.outcomes", "bank.events", rt)
	if err != nil {
		t.Fatal(err)
	}
	outcome := func(corr string) *kgo.Record {
		b, _ := json.Marshal(orchestrix.Outcome{CommandID: "c1", CorrelationID: corr, Status: orchestrix.OutcomeAccepted})
		return &kgo.Record{Topic: "bank.outcomes", Key: []byte("c1"), Value: b}
	}
	event := func(typ, corr string) *kgo.Record {
		r, err := codec.EventToRecord("bank.events", orchestrix.Event{Metadata: orchestrix.Metadata{ID: "e-" + typ, Type: typ, Source: "/bank",
			Time: time.Now(), CorrelationID: corr}, StreamID: "a", Version: 1, ContentType: "application/json", Data: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	mine := Correlation("transfer", "s1")
	for _, r := range []*kgo.Record{
		outcome(mine), outcome("order-7"), outcome(Correlation("other", "s1")),
		event("bank.Debited", mine), event("bank.Other", mine), event("bank.Debited", ""),
	} {
		if err := f.Handle(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*kgo.Record{{Topic: "bank.outcomes", Value: []byte("{")}, {Topic: "bank.events", Value: []byte("x")}} {
		if err := f.Handle(ctx, r); !consumers.IsPermanent(err) {
			t.Fatalf("unreadable %s: %v", r.Topic, err)
		}
	}
	read := testenv.Client(t, seeds, kgo.ConsumeTopics("transfer.saga-inbox"))
	var got []*kgo.Record
	for len(got) < 2 {
		fs := read.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	if len(got) != 2 || string(got[0].Key) != "s1" || header(got[0], HeaderKind) != "outcome" || header(got[0], HeaderInput) != "outcome:c1" ||
		header(got[1], HeaderKind) != "event" || header(got[1], HeaderInput) != "event:e-bank.Debited" {
		t.Fatalf("forwarded %d records: %+v", len(got), got)
	}
	// The forwarded event is an input the runtime folds into the state.
	if err := rt.Handle(ctx, got[1]); err != nil {
		t.Fatal(err)
	}
	i, err := store.Get(ctx, "transfer", "s1")
	if err != nil || !strings.Contains(string(i.State), "saw e-bank.Debited") {
		t.Fatalf("after the event: %s %v", i.State, err)
	}
}

type orderPlaced struct {
	Order  string `json:"order"`
	Amount int64  `json:"amount"`
}

// TestStartOnEvent: an event of a StartOn type becomes a start record on
// the inbox; delivered twice (and started by Start too), it starts one
// instance with the state the mapping built from the decoded payload.
func TestStartOnEvent(t *testing.T) {
	seeds := testenv.FakeBrokers(t)
	cl := testenv.Client(t, seeds, kgo.ProducerLinger(0))
	ctx := t.Context()
	if _, err := kadm.NewClient(cl).CreateTopics(ctx, 1, 1, nil, "transfer.saga-inbox"); err != nil {
		t.Fatal(err)
	}
	reg := codec.NewRegistry()
	for _, err := range []error{codec.RegisterJSON[debit](reg, "t.Debit"), codec.RegisterJSON[orderPlaced](reg, "shop.OrderPlaced")} {
		if err != nil {
			t.Fatal(err)
		}
	}
	d := testDef(t, StartOn("shop.OrderPlaced", func(e orchestrix.Event) (string, xfer, bool) {
		o, ok := e.Payload.(orderPlaced)
		return "order-" + o.Order, xfer{From: "shop", To: "bank", Amount: o.Amount}, ok && o.Amount > 0
	}))
	store := NewMemoryStore()
	rt, err := NewRuntime(store, reg, []Saga{d})
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewForwarder(cl, "", "shop.events", rt)
	if err != nil {
		t.Fatal(err)
	}
	event := func(id string, p orderPlaced) *kgo.Record {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: id, Source: "/shop", Time: time.Now()}, StreamID: p.Order, Version: 1, Payload: p}
		if err := reg.EncodeEvent(&e); err != nil {
			t.Fatal(err)
		}
		r, err := codec.EventToRecord("shop.events", e)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, r := range []*kgo.Record{event("e1", orderPlaced{"7", 25}), event("e1", orderPlaced{"7", 25}), event("e2", orderPlaced{"8", 0})} {
		if err := f.Handle(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	read := testenv.Client(t, seeds, kgo.ConsumeTopics("transfer.saga-inbox"))
	var got []*kgo.Record
	for len(got) < 2 {
		fs := read.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	for _, r := range got {
		if header(r, HeaderKind) != "start" || header(r, HeaderInput) != "start:order-7" {
			t.Fatalf("forwarded %+v", r)
		}
		if err := rt.Handle(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.Start(ctx, "order-7", xfer{Amount: 99}); err != nil {
		t.Fatal(err)
	}
	list, err := store.List(ctx, Filter{})
	if err != nil || len(list) != 1 || !strings.Contains(string(list[0].State), `"Amount":25`) {
		t.Fatalf("instances %+v %v", list, err)
	}
}
