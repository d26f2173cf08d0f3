package codec

import (
	"fmt"
	"mime"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/orchestrix/orchestrix"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names of the CloudEvents 1.0 Kafka protocol binding, binary mode:
// every attribute travels as HeaderPrefix + its name, except
// datacontenttype, which travels as ContentTypeHeader.
const (
	HeaderPrefix      = "ce_"
	ContentTypeHeader = "content-type"
	// SpecVersion is the CloudEvents version written and accepted.
	SpecVersion = "1.0"
)

const (
	hSpecVersion   = HeaderPrefix + "specversion"
	hID            = HeaderPrefix + "id"
	hSource        = HeaderPrefix + "source"
	hType          = HeaderPrefix + "type"
	hSubject       = HeaderPrefix + "subject"
	hTime          = HeaderPrefix + "time"
	hDataSchema    = HeaderPrefix + "dataschema"
	hCorrelationID = HeaderPrefix + "correlationid"
	hCausationID   = HeaderPrefix + "causationid"
	hTraceParent   = HeaderPrefix + "traceparent"
	hAggregateID   = HeaderPrefix + "aggregateid"
	hVersion       = HeaderPrefix + "aggregateversion"
	hPosition      = HeaderPrefix + "position"
	hCommandID     = HeaderPrefix + "commandid"
)

// EventToRecord maps e to a Kafka record for topic in CloudEvents binary
// mode: the key is e.StreamID, the value e.Data, the attributes headers:
//
//	ce_specversion "1.0", ce_id, ce_source, ce_type, ce_subject,
//	ce_time (RFC 3339, nanoseconds, UTC), content-type (e.ContentType),
//	ce_dataschema (e.Extensions[DataSchemaKey]), ce_correlationid,
//	ce_causationid, ce_traceparent, ce_aggregateid (e.StreamID),
//	ce_aggregateversion and ce_position (decimal), ce_commandid,
//	and ce_<name> for every other entry of e.Extensions, sorted by name.
//
// Empty optional attributes and zero Version and Position are left out.
// ID, Type, Source and StreamID must pass orchestrix.CheckID, Time must be
// set, and the attributes must be what CloudEvents accepts (extension
// names lower-case alphanumerics, not one of the attributes above);
// otherwise the error matches orchestrix.ErrInvalid. The record's
// Timestamp is left zero, so the producer stamps it: an event relayed long
// after it happened is not expired early by time-based retention.
func EventToRecord(topic string, e orchestrix.Event) (*kgo.Record, error) {
	if err := checkOut(&e.Metadata, e.StreamID, e.ContentType, true); err != nil {
		return nil, err
	}
	numbers := 0
	if e.Version != 0 {
		numbers++
	}
	if e.Position != 0 {
		numbers++
	}
	w := newHeaderWriter(&e.Metadata, e.ContentType, e.StreamID, e.CommandID, numbers)
	key := w.common(&e.Metadata, e.ContentType, e.StreamID)
	if e.Version != 0 {
		w.addUint(hVersion, e.Version)
	}
	if e.Position != 0 {
		w.addUint(hPosition, e.Position)
	}
	w.add(hCommandID, e.CommandID)
	w.extensions(e.Extensions)
	return &kgo.Record{Topic: topic, Key: key, Value: e.Data, Headers: w.hs}, nil
}

// CommandToRecord maps c to a Kafka record for topic like EventToRecord:
// the key and ce_aggregateid are c.AggregateID, and there are no
// ce_aggregateversion, ce_position or ce_commandid headers (extensions of
// those names are allowed).
func CommandToRecord(topic string, c orchestrix.Command) (*kgo.Record, error) {
	if err := checkOut(&c.Metadata, c.AggregateID, c.ContentType, false); err != nil {
		return nil, err
	}
	w := newHeaderWriter(&c.Metadata, c.ContentType, c.AggregateID, "", 0)
	key := w.common(&c.Metadata, c.ContentType, c.AggregateID)
	w.extensions(c.Extensions)
	return &kgo.Record{Topic: topic, Key: key, Value: c.Data, Headers: w.hs}, nil
}

// RecordToEvent maps a record written by EventToRecord (or any producer
// of the same CloudEvents binding) back to an event; Data shares the
// record's value. Headers without the ce_ prefix, other than
// content-type, are ignored. The stream ID is ce_aggregateid, or the key
// when that header is absent. A record that can never be a valid event
// fails with a *PoisonError, which matches orchestrix.ErrInvalid: missing
// ce_specversion, ce_id, ce_source, ce_type, ce_time or stream ID, a
// specversion other than 1.0, an unparsable time or number, a duplicate or
// malformed header, a key that differs from ce_aggregateid, or attributes
// the CloudEvents SDK's validation rejects.
func RecordToEvent(r *kgo.Record) (orchestrix.Event, error) {
	a, err := readRecord(r, true)
	if err != nil {
		return orchestrix.Event{}, err
	}
	e := orchestrix.Event{
		Metadata:    a.meta,
		StreamID:    a.aggregateID,
		CommandID:   a.commandID,
		ContentType: a.contentType,
		Data:        r.Value,
	}
	if e.Version, err = parseUint(hVersion, a.version); err != nil {
		return orchestrix.Event{}, err
	}
	if e.Position, err = parseUint(hPosition, a.position); err != nil {
		return orchestrix.Event{}, err
	}
	return e, nil
}

func parseUint(header, v string) (uint64, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, poison(ReasonBadNumber, "%s %q is not a decimal uint64", header, v)
	}
	return n, nil
}

// RecordToCommand maps a record written by CommandToRecord back to a
// command, with the checks and errors of RecordToEvent.
func RecordToCommand(r *kgo.Record) (orchestrix.Command, error) {
	a, err := readRecord(r, false)
	if err != nil {
		return orchestrix.Command{}, err
	}
	return orchestrix.Command{
		Metadata:    a.meta,
		AggregateID: a.aggregateID,
		ContentType: a.contentType,
		Data:        r.Value,
	}, nil
}

// reserved reports whether name is an attribute this mapping fills from a
// field, so it may not come from Metadata.Extensions.
func reserved(name string, event bool) bool {
	switch name {
	case "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
		"correlationid", "causationid", "traceparent", "aggregateid":
		return true
	case "aggregateversion", "position", "commandid":
		return event
	}
	return false
}

// validName reports whether name is a CloudEvents attribute name:
// lower-case ASCII letters and digits.
func validName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// checkOut checks what RecordToEvent and the CloudEvents SDK will check,
// so that no record we write is poison.
func checkOut(m *orchestrix.Metadata, aggID, contentType string, event bool) error {
	kind, names := "command", [...]string{"command id", "command type", "command source", "aggregate id"}
	if event {
		kind, names = "event", [...]string{"event id", "event type", "event source", "stream id"}
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("codec: %s %q: %s: %w", kind, m.ID, fmt.Sprintf(format, args...), orchestrix.ErrInvalid)
	}
	for i, v := range [...]string{m.ID, m.Type, m.Source, aggID} {
		if err := orchestrix.CheckID(names[i], v); err != nil {
			return fmt.Errorf("codec: %w", err)
		}
		if strings.TrimSpace(v) == "" {
			return fail("%s is blank", names[i])
		}
	}
	if !validTime(m.Time) {
		return fail("time %v is zero or outside years 0000-9999 in UTC", m.Time)
	}
	if !plainPath(m.Source) {
		if _, err := url.Parse(m.Source); err != nil {
			return fail("source is not a URI reference: %v", err)
		}
	}
	if contentType != "" && contentType != ContentTypeJSON && contentType != ContentTypeAvro {
		if _, _, err := mime.ParseMediaType(contentType); err != nil {
			return fail("content type %q: %v", contentType, err)
		}
	}
	for _, v := range [...]string{m.ID, m.Type, m.Source, m.Subject, m.CorrelationID, m.CausationID, m.TraceParent, aggID, contentType} {
		if !utf8.ValidString(v) {
			return fail("attribute %q is not UTF-8", v)
		}
	}
	for k, v := range m.Extensions {
		switch {
		case k == DataSchemaKey:
			if u, err := url.Parse(v); err != nil || !u.IsAbs() {
				return fail("dataschema %q is not an absolute URI", v)
			}
		case !validName(k):
			return fail("extension name %q is not lower-case alphanumerics", k)
		case reserved(k, event):
			return fail("extension %q would overwrite an attribute", k)
		}
		if !utf8.ValidString(v) {
			return fail("extension %q is not UTF-8", k)
		}
	}
	return nil
}

// plainPath reports whether s is made only of letters, digits and
// "-._~/": a relative reference url.Parse always accepts (no scheme, no
// escapes, no control characters), so the check can skip it. Most
// sources are such paths; url.Parse cost one allocation and 7% of
// EventToRecord.
func plainPath(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
			return false
		}
	}
	return true
}

// validTime reports whether t is set and its UTC form has a four-digit
// year, as RFC 3339 requires.
func validTime(t time.Time) bool {
	y := t.UTC().Year()
	return !t.IsZero() && y >= 0 && y <= 9999
}

// headerWriter builds headers whose values share one buffer.
type headerWriter struct {
	hs  []kgo.RecordHeader
	buf []byte
}

func newHeaderWriter(m *orchestrix.Metadata, contentType, aggID, commandID string, numbers int) headerWriter {
	n := len(SpecVersion) + len(m.ID) + len(m.Source) + len(m.Type) + len(m.Subject) + len(contentType) +
		len(m.CorrelationID) + len(m.CausationID) + len(m.TraceParent) + len(aggID) + len(commandID) +
		len(time.RFC3339Nano) + numbers*20
	// specversion, id, source, type, time and aggregateid, the optional
	// attributes that are set, the numbers and the extensions, and room
	// for one more header (the outbox relay adds its instance's).
	hs := 6 + numbers + len(m.Extensions) + 1
	for _, v := range [...]string{m.Subject, contentType, m.CorrelationID, m.CausationID, m.TraceParent, commandID} {
		if v != "" {
			hs++
		}
	}
	for _, v := range m.Extensions {
		n += len(v)
	}
	return headerWriter{
		hs:  make([]kgo.RecordHeader, 0, hs),
		buf: make([]byte, 0, n),
	}
}

// common adds the attributes events and commands share and returns the
// aggregate ID's bytes, for the record key.
func (w *headerWriter) common(m *orchestrix.Metadata, contentType, aggID string) []byte {
	w.add(hSpecVersion, SpecVersion)
	w.add(hID, m.ID)
	w.add(hSource, m.Source)
	w.add(hType, m.Type)
	w.add(hSubject, m.Subject)
	start := len(w.buf)
	w.buf = m.Time.UTC().AppendFormat(w.buf, time.RFC3339Nano)
	w.push(hTime, start)
	w.add(ContentTypeHeader, contentType)
	w.add(hDataSchema, m.Extensions[DataSchemaKey])
	w.add(hCorrelationID, m.CorrelationID)
	w.add(hCausationID, m.CausationID)
	w.add(hTraceParent, m.TraceParent)
	w.add(hAggregateID, aggID)
	return w.hs[len(w.hs)-1].Value
}

func (w *headerWriter) add(key, v string) {
	if v != "" {
		start := len(w.buf)
		w.buf = append(w.buf, v...)
		w.push(key, start)
	}
}

func (w *headerWriter) addUint(key string, n uint64) {
	start := len(w.buf)
	w.buf = strconv.AppendUint(w.buf, n, 10)
	w.push(key, start)
}

// push adds a header whose value is buf[start:]. Should buf grow, earlier
// values keep the old array, which stays valid.
func (w *headerWriter) push(key string, start int) {
	end := len(w.buf)
	w.hs = append(w.hs, kgo.RecordHeader{Key: key, Value: w.buf[start:end:end]})
}

func (w *headerWriter) extensions(ext map[string]string) {
	if len(ext) == 0 {
		return
	}
	var arr [8]string
	keys := arr[:0]
	for k := range ext {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k != DataSchemaKey { // empty values too: they round-trip
			start := len(w.buf)
			w.buf = append(w.buf, ext[k]...)
			w.push(HeaderPrefix+k, start)
		}
	}
}

// attrs are the attributes read from a record's headers.
type attrs struct {
	meta                           orchestrix.Metadata
	specVersion, time, contentType string
	dataSchema, aggregateID        string
	version, position, commandID   string
	seen                           uint32
}

// slot returns where attribute name goes and its bit in seen; nil for an
// extension.
func (a *attrs) slot(name string, event bool) (*string, uint32) {
	switch name {
	case "specversion":
		return &a.specVersion, 1 << 0
	case "id":
		return &a.meta.ID, 1 << 1
	case "source":
		return &a.meta.Source, 1 << 2
	case "type":
		return &a.meta.Type, 1 << 3
	case "subject":
		return &a.meta.Subject, 1 << 4
	case "time":
		return &a.time, 1 << 5
	case "datacontenttype":
		return &a.contentType, 1 << 6
	case "dataschema":
		return &a.dataSchema, 1 << 7
	case "correlationid":
		return &a.meta.CorrelationID, 1 << 8
	case "causationid":
		return &a.meta.CausationID, 1 << 9
	case "traceparent":
		return &a.meta.TraceParent, 1 << 10
	case "aggregateid":
		return &a.aggregateID, 1 << 11
	}
	if event {
		switch name {
		case "aggregateversion":
			return &a.version, 1 << 12
		case "position":
			return &a.position, 1 << 13
		case "commandid":
			return &a.commandID, 1 << 14
		}
	}
	return nil, 0
}

// readRecord reads and validates the CloudEvents attributes of r.
func readRecord(r *kgo.Record, event bool) (*attrs, error) {
	if r == nil {
		return nil, poison(ReasonNilRecord, "nil record")
	}
	// All header values become substrings of one string: one allocation.
	n := 0
	for _, h := range r.Headers {
		n += len(h.Value)
	}
	var sb strings.Builder
	sb.Grow(n)
	for _, h := range r.Headers {
		sb.Write(h.Value)
	}
	all, off := sb.String(), 0

	a := &attrs{}
	for _, h := range r.Headers {
		v := all[off : off+len(h.Value)]
		off += len(h.Value)
		var name string
		switch {
		case strings.EqualFold(h.Key, ContentTypeHeader):
			name = "datacontenttype"
		case strings.HasPrefix(h.Key, HeaderPrefix):
			name = h.Key[len(HeaderPrefix):]
			if !validName(name) || name == "datacontenttype" || name == "data" {
				return nil, poison(ReasonBadHeader, "header %q is not a CloudEvents attribute of the binary mode", h.Key)
			}
		default:
			continue
		}
		if !utf8.ValidString(v) {
			return nil, poison(ReasonBadHeader, "header %q is not UTF-8", h.Key)
		}
		p, bit := a.slot(name, event)
		if p == nil {
			if _, dup := a.meta.Extensions[name]; dup {
				return nil, poison(ReasonDuplicateHeader, "header %q occurs twice", h.Key)
			}
			if a.meta.Extensions == nil {
				a.meta.Extensions = map[string]string{}
			}
			a.meta.Extensions[name] = v
			continue
		}
		if a.seen&bit != 0 {
			return nil, poison(ReasonDuplicateHeader, "header %q occurs twice", h.Key)
		}
		a.seen |= bit
		*p = v
	}

	var missing []string
	for _, h := range [...]struct {
		name string
		bit  uint32
	}{{hSpecVersion, 1 << 0}, {hID, 1 << 1}, {hSource, 1 << 2}, {hType, 1 << 3}, {hTime, 1 << 5}} {
		if a.seen&h.bit == 0 {
			missing = append(missing, h.name)
		}
	}
	if a.seen&(1<<11) == 0 {
		if len(r.Key) == 0 {
			missing = append(missing, hAggregateID+" (or a record key)")
		}
		if !utf8.Valid(r.Key) {
			return nil, poison(ReasonBadHeader, "record key is not UTF-8")
		}
		a.aggregateID = string(r.Key)
	} else if len(r.Key) > 0 && string(r.Key) != a.aggregateID {
		return nil, poison(ReasonKeyMismatch, "record key %q differs from %s %q", r.Key, hAggregateID, a.aggregateID)
	}
	switch {
	case a.seen&1 != 0 && a.specVersion != SpecVersion:
		return nil, poison(ReasonBadSpecVersion, "%s is %q, want %q", hSpecVersion, a.specVersion, SpecVersion)
	case len(missing) > 0:
		return nil, poison(ReasonMissingHeader, "missing %s", strings.Join(missing, ", "))
	}
	for _, f := range [...]struct{ what, v string }{{"id", a.meta.ID}, {"type", a.meta.Type}, {"aggregate id", a.aggregateID}} {
		if err := orchestrix.CheckID(f.what, f.v); err != nil {
			return nil, &PoisonError{Reason: ReasonBadID, Err: err}
		}
		if strings.TrimSpace(f.v) == "" {
			return nil, poison(ReasonBadID, "%s is blank", f.what)
		}
	}
	t, err := time.Parse(time.RFC3339Nano, a.time)
	if err != nil {
		return nil, poison(ReasonBadTime, "%s %q is not RFC 3339", hTime, a.time)
	}
	if !validTime(t) {
		return nil, poison(ReasonBadTime, "%s %q is zero or outside years 0000-9999 in UTC", hTime, a.time)
	}
	a.meta.Time = t.UTC()
	if a.dataSchema != "" {
		if a.meta.Extensions == nil {
			a.meta.Extensions = make(map[string]string, 1)
		}
		a.meta.Extensions[DataSchemaKey] = a.dataSchema
	}
	if err := validateCloudEvent(a); err != nil {
		return nil, &PoisonError{Reason: ReasonInvalidEvent, Err: err}
	}
	return a, nil
}

// validateCloudEvent has the CloudEvents SDK validate the attributes, so
// that what is accepted here is what CloudEvents accepts.
func validateCloudEvent(a *attrs) error {
	ev := event.New(SpecVersion)
	ev.SetID(a.meta.ID)
	ev.SetSource(a.meta.Source)
	ev.SetType(a.meta.Type)
	ev.SetSubject(a.meta.Subject)
	ev.SetTime(a.meta.Time)
	ev.SetDataContentType(a.contentType)
	ev.SetDataSchema(a.dataSchema)
	for k, v := range a.meta.Extensions {
		if k != DataSchemaKey {
			ev.SetExtension(k, v)
		}
	}
	for _, x := range [...]struct{ k, v string }{
		{"correlationid", a.meta.CorrelationID}, {"causationid", a.meta.CausationID},
		{"traceparent", a.meta.TraceParent}, {"aggregateid", a.aggregateID},
		{"aggregateversion", a.version}, {"position", a.position}, {"commandid", a.commandID},
	} {
		if x.v != "" {
			ev.SetExtension(x.k, x.v)
		}
	}
	return ev.Validate()
}
