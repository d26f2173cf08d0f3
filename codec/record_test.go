package codec_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

func sampleEvent() orchestrix.Event {
	return orchestrix.Event{
		Metadata: orchestrix.Metadata{
			ID: "0190f3c2-7d1e-7c4a-9b1e-2a3b4c5d6e7f", Type: "banking.Deposited", Source: "/banking",
			Subject: "acc-1", Time: time.Date(2025, 6, 7, 8, 9, 10, 123456789, time.FixedZone("CEST", 2*3600)),
			CorrelationID: "corr-1", CausationID: "cmd-1",
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			Extensions:  map[string]string{"tenant": "t1", "region": "eu", codec.DataSchemaKey: "avro:banking.Deposited:00ff00ff00ff00ff"},
		},
		StreamID: "acc-1", Version: 7, Position: 1 << 40, CommandID: "cmd-1",
		ContentType: "application/json", Data: []byte(`{"amount":10}`),
	}
}

func sampleCommand() orchestrix.Command {
	return orchestrix.Command{
		Metadata: orchestrix.Metadata{
			ID: "c-1", Type: "banking.Deposit", Source: "/teller", Time: time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC),
			Extensions: map[string]string{"position": "not ours on a command"},
		},
		AggregateID: "acc-1", ContentType: "application/json", Data: []byte(`{"amount":10}`),
	}
}

func headerMap(t testing.TB, r *kgo.Record) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, h := range r.Headers {
		if _, dup := m[h.Key]; dup {
			t.Fatalf("duplicate header %q", h.Key)
		}
		m[h.Key] = string(h.Value)
	}
	return m
}

func TestEventRecordRoundTrip(t *testing.T) {
	e := sampleEvent()
	rec, err := codec.EventToRecord("banking.events", e)
	if err != nil {
		t.Fatal(err)
	}
	wantHeaders := map[string]string{
		"ce_specversion": "1.0", "ce_id": e.ID, "ce_source": "/banking", "ce_type": "banking.Deposited",
		"ce_subject": "acc-1", "ce_time": "2025-06-07T06:09:10.123456789Z", "content-type": "application/json",
		"ce_dataschema": "avro:banking.Deposited:00ff00ff00ff00ff", "ce_correlationid": "corr-1", "ce_causationid": "cmd-1",
		"ce_traceparent": e.TraceParent, "ce_aggregateid": "acc-1", "ce_aggregateversion": "7",
		"ce_position": "1099511627776", "ce_commandid": "cmd-1", "ce_tenant": "t1", "ce_region": "eu",
	}
	if got := headerMap(t, rec); !maps.Equal(got, wantHeaders) {
		t.Fatalf("headers\n%v\nwant\n%v", got, wantHeaders)
	}
	if rec.Topic != "banking.events" || string(rec.Key) != "acc-1" || !bytes.Equal(rec.Value, e.Data) || !rec.Timestamp.IsZero() {
		t.Fatalf("record = %+v", rec)
	}
	// Room for exactly one more header (the outbox relay's instance).
	if cap(rec.Headers) != len(rec.Headers)+1 {
		t.Errorf("headers: len %d cap %d, want cap len+1", len(rec.Headers), cap(rec.Headers))
	}

	got, err := codec.RecordToEvent(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(e.Time) || got.Time.Location() != time.UTC {
		t.Fatalf("time = %v, want %v in UTC", got.Time, e.Time)
	}
	got.Time = e.Time
	if !reflect.DeepEqual(got, e) {
		t.Fatalf("round trip\n%+v\nwant\n%+v", got, e)
	}

	t.Run("minimal", func(t *testing.T) {
		e := orchestrix.Event{Metadata: orchestrix.Metadata{ID: "1", Type: "t", Source: "s", Time: time.Unix(1, 0).UTC()}, StreamID: "s-1"}
		rec, err := codec.EventToRecord("x", e)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Headers) != 6 || cap(rec.Headers) != 7 {
			t.Fatalf("headers (cap %d) = %v", cap(rec.Headers), headerMap(t, rec))
		}
		got, err := codec.RecordToEvent(rec)
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Fatalf("round trip = %+v, %v", got, err)
		}
	})
}

func TestCommandRecordRoundTrip(t *testing.T) {
	c := sampleCommand()
	rec, err := codec.CommandToRecord("banking.commands", c)
	if err != nil {
		t.Fatal(err)
	}
	h := headerMap(t, rec)
	if string(rec.Key) != "acc-1" || h["ce_aggregateid"] != "acc-1" || h["ce_position"] != "not ours on a command" {
		t.Fatalf("record %q headers %v", rec.Key, h)
	}
	got, err := codec.RecordToCommand(rec)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip\n%+v\nwant\n%+v", got, c)
	}
	// An event record is not a command's business: its extras become extensions.
	ev, _ := codec.EventToRecord("x", sampleEvent())
	cmd, err := codec.RecordToCommand(ev)
	if err != nil || cmd.AggregateID != "acc-1" || cmd.Extensions["aggregateversion"] != "7" {
		t.Fatalf("event record as command: %+v, %v", cmd, err)
	}
}

func TestToRecordValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*orchestrix.Event)
	}{
		{"no id", func(e *orchestrix.Event) { e.ID = "" }},
		{"blank id", func(e *orchestrix.Event) { e.ID = "  " }},
		{"no type", func(e *orchestrix.Event) { e.Type = "" }},
		{"no source", func(e *orchestrix.Event) { e.Source = "" }},
		{"bad source", func(e *orchestrix.Event) { e.Source = "%zz" }},
		{"no stream", func(e *orchestrix.Event) { e.StreamID = "" }},
		{"control byte", func(e *orchestrix.Event) { e.StreamID = "a\nb" }},
		{"no time", func(e *orchestrix.Event) { e.Time = time.Time{} }},
		{"bad content type", func(e *orchestrix.Event) { e.ContentType = "text/" }},
		{"bad utf8", func(e *orchestrix.Event) { e.Subject = "\xff" }},
		{"bad extension name", func(e *orchestrix.Event) { e.Extensions = map[string]string{"Tenant": "x"} }},
		{"extension with underscore", func(e *orchestrix.Event) { e.Extensions = map[string]string{"a_b": "x"} }},
		{"reserved extension", func(e *orchestrix.Event) { e.Extensions = map[string]string{"position": "1"} }},
		{"relative dataschema", func(e *orchestrix.Event) { e.Extensions = map[string]string{codec.DataSchemaKey: "/schemas/1"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sampleEvent()
			tc.change(&e)
			if _, err := codec.EventToRecord("x", e); !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	c := sampleCommand()
	c.AggregateID = ""
	if _, err := codec.CommandToRecord("x", c); !errors.Is(err, orchestrix.ErrInvalid) {
		t.Fatalf("command without aggregate: %v", err)
	}
}

func TestRecordToEventPoison(t *testing.T) {
	valid, err := codec.EventToRecord("x", sampleEvent())
	if err != nil {
		t.Fatal(err)
	}
	without := func(key string) func(*kgo.Record) {
		return func(r *kgo.Record) {
			hs := r.Headers[:0:0]
			for _, h := range r.Headers {
				if h.Key != key {
					hs = append(hs, h)
				}
			}
			r.Headers = hs
		}
	}
	with := func(key, value string) func(*kgo.Record) {
		return func(r *kgo.Record) {
			without(key)(r)
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
		}
	}
	also := func(key, value string) func(*kgo.Record) {
		return func(r *kgo.Record) { r.Headers = append(r.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)}) }
	}
	for _, tc := range []struct {
		name   string
		change func(*kgo.Record)
		reason string
	}{
		{"no specversion", without("ce_specversion"), codec.ReasonMissingHeader},
		{"no id", without("ce_id"), codec.ReasonMissingHeader},
		{"no source", without("ce_source"), codec.ReasonMissingHeader},
		{"no type", without("ce_type"), codec.ReasonMissingHeader},
		{"no time", without("ce_time"), codec.ReasonMissingHeader},
		{"no aggregate, no key", func(r *kgo.Record) { without("ce_aggregateid")(r); r.Key = nil }, codec.ReasonMissingHeader},
		{"no headers", func(r *kgo.Record) { r.Headers = nil }, codec.ReasonMissingHeader},
		{"specversion 0.3", with("ce_specversion", "0.3"), codec.ReasonBadSpecVersion},
		{"specversion empty", with("ce_specversion", ""), codec.ReasonBadSpecVersion},
		{"time not RFC 3339", with("ce_time", "2025-06-07 08:09:10"), codec.ReasonBadTime},
		{"time empty", with("ce_time", ""), codec.ReasonBadTime},
		{"version not a number", with("ce_aggregateversion", "-1"), codec.ReasonBadNumber},
		{"position overflows", with("ce_position", "18446744073709551616"), codec.ReasonBadNumber},
		{"duplicate id", also("ce_id", "other"), codec.ReasonDuplicateHeader},
		{"duplicate content-type", also("Content-Type", "text/plain"), codec.ReasonDuplicateHeader},
		{"duplicate extension", also("ce_tenant", "t2"), codec.ReasonDuplicateHeader},
		{"upper-case attribute", also("ce_Tenant", "t2"), codec.ReasonBadHeader},
		{"datacontenttype header", also("ce_datacontenttype", "text/plain"), codec.ReasonBadHeader},
		{"bare prefix", also("ce_", "x"), codec.ReasonBadHeader},
		{"not UTF-8", with("ce_subject", "\xc3\x28"), codec.ReasonBadHeader},
		{"empty id", with("ce_id", ""), codec.ReasonBadID},
		{"control byte in type", with("ce_type", "a\x00b"), codec.ReasonBadID},
		{"key mismatch", func(r *kgo.Record) { r.Key = []byte("acc-2") }, codec.ReasonKeyMismatch},
		{"key not UTF-8", func(r *kgo.Record) { without("ce_aggregateid")(r); r.Key = []byte{0xff} }, codec.ReasonBadHeader},
		{"blank id", with("ce_id", "   "), codec.ReasonBadID},
		{"blank aggregate id", func(r *kgo.Record) { with("ce_aggregateid", " ")(r); r.Key = nil }, codec.ReasonBadID},
		{"empty source", with("ce_source", ""), codec.ReasonInvalidEvent},
		{"source not a URI reference", with("ce_source", "%zz"), codec.ReasonInvalidEvent},
		{"dataschema not absolute", with("ce_dataschema", "/s/1"), codec.ReasonInvalidEvent},
		{"bad content type", with("content-type", "a b"), codec.ReasonInvalidEvent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := *valid
			r.Headers = slicesClone(valid.Headers)
			tc.change(&r)
			_, err := codec.RecordToEvent(&r)
			var pe *codec.PoisonError
			if !errors.As(err, &pe) || pe.Reason != tc.reason || !errors.Is(err, orchestrix.ErrInvalid) {
				t.Fatalf("err = %v, want a *PoisonError %q", err, tc.reason)
			}
		})
	}
	t.Run("nil record", func(t *testing.T) {
		var pe *codec.PoisonError
		if _, err := codec.RecordToCommand(nil); !errors.As(err, &pe) || pe.Reason != codec.ReasonNilRecord {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("tolerated", func(t *testing.T) {
		r := *valid
		r.Headers = append(slicesClone(valid.Headers), kgo.RecordHeader{Key: "dlq_error", Value: []byte("\xff")})
		without("ce_aggregateid")(&r) // the key stands in
		if e, err := codec.RecordToEvent(&r); err != nil || e.StreamID != "acc-1" {
			t.Fatalf("%+v, %v", e, err)
		}
	})
}

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }

// headerWriter is the binary-mode writer the CloudEvents Kafka binding
// specifies: ce_ + attribute name, content-type for datacontenttype, and
// values in their canonical string form.
type headerWriter map[string]string

func (h headerWriter) SetAttribute(a spec.Attribute, v any) error {
	s, err := types.Format(v)
	if a.Kind() == spec.DataContentType {
		h["content-type"] = s
	} else {
		h["ce_"+a.Name()] = s
	}
	return err
}

func (h headerWriter) SetExtension(name string, v any) error {
	s, err := types.Format(v)
	h["ce_"+name] = s
	return err
}
func (h headerWriter) Start(context.Context) error { return nil }
func (h headerWriter) SetData(io.Reader) error     { return nil }
func (h headerWriter) End(context.Context) error   { return nil }

// recordMessage reads a Kafka record as the binding specifies, through
// the SDK's own attribute table.
type recordMessage struct{ r *kgo.Record }

var kafkaSpecs = spec.WithPrefix("ce_")

func (m recordMessage) ReadEncoding() binding.Encoding { return binding.EncodingBinary }
func (m recordMessage) ReadStructured(context.Context, binding.StructuredWriter) error {
	return binding.ErrNotStructured
}
func (m recordMessage) Finish(error) error { return nil }

func (m recordMessage) header(key string) any {
	for _, h := range m.r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return nil
}

func (m recordMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	a := kafkaSpecs.Version("1.0").AttributeFromKind(k)
	if a == nil {
		return nil, nil
	}
	if k == spec.DataContentType {
		return a, m.header("content-type")
	}
	return a, m.header(a.PrefixedName())
}

func (m recordMessage) GetExtension(name string) any { return m.header("ce_" + name) }
func (m recordMessage) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	v := kafkaSpecs.Version("1.0")
	for _, h := range m.r.Headers {
		switch {
		case h.Key == "content-type":
			if err := w.SetAttribute(v.AttributeFromKind(spec.DataContentType), string(h.Value)); err != nil {
				return err
			}
		case v.Attribute(h.Key) != nil:
			if err := w.SetAttribute(v.Attribute(h.Key), string(h.Value)); err != nil {
				return err
			}
		case strings.HasPrefix(h.Key, "ce_"):
			if err := w.SetExtension(strings.TrimPrefix(h.Key, "ce_"), string(h.Value)); err != nil {
				return err
			}
		}
	}
	return w.SetData(bytes.NewReader(m.r.Value))
}

// TestAgreesWithSDK checks the mapping against the CloudEvents SDK both
// ways: the SDK writing the same event in binary mode produces our
// headers, and the SDK reading our record sees our attributes.
func TestAgreesWithSDK(t *testing.T) {
	e := sampleEvent()
	ours, err := codec.EventToRecord("x", e)
	if err != nil {
		t.Fatal(err)
	}

	ev := event.New()
	ev.SetID(e.ID)
	ev.SetSource(e.Source)
	ev.SetType(e.Type)
	ev.SetSubject(e.Subject)
	ev.SetTime(e.Time)
	ev.SetDataSchema(e.Extensions[codec.DataSchemaKey])
	if err := ev.SetData(e.ContentType, e.Data); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{
		"correlationid": e.CorrelationID, "causationid": e.CausationID, "traceparent": e.TraceParent,
		"aggregateid": e.StreamID, "aggregateversion": "7", "position": "1099511627776", "commandid": e.CommandID,
		"tenant": "t1", "region": "eu",
	} {
		ev.SetExtension(k, v)
	}
	if err := ev.Validate(); err != nil {
		t.Fatal(err)
	}
	sdk := headerWriter{}
	if _, err := binding.Write(binding.WithForceBinary(t.Context()), (*binding.EventMessage)(&ev), nil, sdk); err != nil {
		t.Fatal(err)
	}
	if got := headerMap(t, ours); !maps.Equal(got, sdk) {
		t.Fatalf("our headers\n%v\nSDK's\n%v", got, map[string]string(sdk))
	}

	read, err := binding.ToEvent(t.Context(), recordMessage{ours})
	if err != nil {
		t.Fatal(err)
	}
	if err := read.Validate(); err != nil {
		t.Fatal(err)
	}
	if read.ID() != e.ID || read.Source() != e.Source || read.Type() != e.Type || read.Subject() != e.Subject ||
		!read.Time().Equal(e.Time) || read.DataContentType() != e.ContentType ||
		read.DataSchema() != e.Extensions[codec.DataSchemaKey] || !bytes.Equal(read.Data(), e.Data) {
		t.Fatalf("SDK read %v", read)
	}
	want := map[string]any{}
	for k, v := range sdk {
		if k, ok := strings.CutPrefix(k, "ce_"); ok && event.IsExtensionNameValid(k) && k != "id" && k != "source" &&
			k != "type" && k != "subject" && k != "time" && k != "specversion" && k != "dataschema" {
			want[k] = v
		}
	}
	if !maps.Equal(read.Extensions(), want) {
		t.Fatalf("SDK extensions %v, want %v", read.Extensions(), want)
	}
}
