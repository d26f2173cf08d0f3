package sagas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Forwarder brings replies to their sagas: run it as the Handler of a
// consumers.Group on a context's outcomes and events topics. An outcome
// (key = command ID) or event (key = aggregate ID) whose correlation ID
// names an instance of a saga type it serves ("saga:<type>:<id>") is
// re-published to that type's inbox topic keyed by the saga ID, so all
// of one instance's inputs meet on one partition, in the order they are
// forwarded; events only when the definition reacts to their type. An
// event of a type a definition starts on (StartOn) becomes a start
// record on that inbox. Everything else is skipped. It produces each record synchronously
// before returning, so the group commits the source offset only after
// the copy is acknowledged; a crash in between forwards it again, and
// the inbox makes the copy harmless.
type Forwarder struct {
	client   *kgo.Client
	outcomes string
	events   string
	inbox    map[string]string          // saga type -> inbox topic
	types    map[string]map[string]bool // saga type -> event types
	starts   map[string][]*Runtime      // event type -> runtimes it starts an instance of
}

// NewForwarder returns a forwarder producing with client, reading
// outcomes from outcomesTopic and events from eventsTopic (either may be
// empty), for the sagas of runtimes.
func NewForwarder(client *kgo.Client, outcomesTopic, eventsTopic string, runtimes ...*Runtime) (*Forwarder, error) {
	f := &Forwarder{client: client, outcomes: outcomesTopic, events: eventsTopic, inbox: map[string]string{}, types: map[string]map[string]bool{},
		starts: map[string][]*Runtime{}}
	var errs []error
	if client == nil {
		errs = append(errs, errors.New("nil client"))
	}
	if outcomesTopic == "" && eventsTopic == "" {
		errs = append(errs, errors.New("no outcomes or events topic"))
	}
	if len(runtimes) == 0 {
		errs = append(errs, errors.New("no runtimes"))
	}
	for _, r := range runtimes {
		if r == nil {
			errs = append(errs, errors.New("nil runtime"))
			continue
		}
		f.inbox[r.typ] = r.inbox
		f.types[r.typ] = map[string]bool{}
		for _, d := range r.defs {
			for _, et := range d.EventTypes() {
				f.types[r.typ][et] = true
			}
		}
		for _, et := range r.latest.StartTypes() {
			f.starts[et] = append(f.starts[et], r)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("sagas: forwarder: %w: %w", orchestrix.ErrInvalid, err)
	}
	return f, nil
}

// Topics returns the topics the forwarder reads.
func (f *Forwarder) Topics() []string {
	var out []string
	for _, t := range []string{f.outcomes, f.events} {
		if t != "" {
			out = append(out, t)
		}
	}
	return out
}

// Handle implements consumers.Handler. A record it cannot read (an
// outcome that is not JSON, an event that is not a CloudEvent) fails
// permanently and is dead-lettered by the group.
func (f *Forwarder) Handle(ctx context.Context, rec *kgo.Record) error {
	var out *kgo.Record
	switch rec.Topic {
	case f.outcomes:
		var o struct {
			CommandID     string `json:"commandId"`
			CorrelationID string `json:"correlationId"`
		}
		if err := json.Unmarshal(rec.Value, &o); err != nil {
			return consumers.Permanent(fmt.Errorf("sagas: outcome at %s/%d/%d is not JSON: %w: %w", rec.Topic, rec.Partition, rec.Offset, orchestrix.ErrInvalid, err))
		}
		typ, id, ok := ParseCorrelation(o.CorrelationID)
		topic, served := f.inbox[typ]
		if !ok || !served {
			return nil
		}
		m := InboxMessage(topic, id, KindOutcome, "outcome:"+o.CommandID, rec.Value)
		out = &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: withTrace(m.Headers, rec)}
	case f.events:
		e, err := codec.RecordToEvent(rec)
		if err != nil {
			return consumers.Permanent(fmt.Errorf("sagas: event at %s/%d/%d: %w", rec.Topic, rec.Partition, rec.Offset, err))
		}
		var outs []*kgo.Record
		for _, r := range f.starts[e.Type] {
			m, ok, err := r.startFrom(e)
			if err != nil {
				return consumers.Permanent(fmt.Errorf("sagas: event at %s/%d/%d: %w", rec.Topic, rec.Partition, rec.Offset, err))
			}
			if ok {
				outs = append(outs, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: withTrace(m.Headers, rec)})
			}
		}
		typ, id, ok := ParseCorrelation(e.CorrelationID)
		if topic, served := f.inbox[typ]; ok && served && f.types[typ][e.Type] {
			m := InboxMessage(topic, id, KindEvent, "event:"+e.ID, rec.Value)
			outs = append(outs, &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: append(append([]kgo.RecordHeader(nil), rec.Headers...), m.Headers...)})
		}
		if len(outs) == 0 {
			return nil
		}
		if err := f.client.ProduceSync(ctx, outs...).FirstErr(); err != nil {
			return fmt.Errorf("sagas: forward event %s: %w", e.ID, err)
		}
		return nil
	default:
		return nil
	}
	if err := f.client.ProduceSync(ctx, out).FirstErr(); err != nil {
		return fmt.Errorf("sagas: forward to %s: %w", out.Topic, err)
	}
	return nil
}

// withTrace returns hs with rec's ce_traceparent header, if it has one:
// an inbox record continues the trace of the record it was forwarded
// from (an event's copy carries all of the event's headers anyway).
func withTrace(hs []kgo.RecordHeader, rec *kgo.Record) []kgo.RecordHeader {
	if tp := traceParentOf(rec); tp != "" {
		return append(hs, kgo.RecordHeader{Key: headerTraceParent, Value: []byte(tp)})
	}
	return hs
}
