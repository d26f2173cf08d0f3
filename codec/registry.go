package codec

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/orchestrix/orchestrix"
)

// Content types of the payload codecs.
const (
	ContentTypeJSON = "application/json"
	ContentTypeAvro = "application/avro"
)

// DefaultMaxPayload is the payload limit of a Registry made without
// WithMaxPayload: 1 MiB, Kafka's default maximum message size.
const DefaultMaxPayload = 1 << 20

// DataSchemaKey is the key under which EncodeEvent and EncodeCommand store
// the CloudEvents dataschema (an Avro writer-schema ID) in
// Metadata.Extensions, since Event and Command have no field for it. The
// record mapping carries it as the ce_dataschema attribute, not as an
// extension.
const DataSchemaKey = "dataschema"

// Registry maps message type names to Go types and their payload codecs.
// There is no global registry: make one with NewRegistry, register every
// type at start-up, then share it. A Registry is safe for concurrent use.
type Registry struct {
	maxPayload int

	mu        sync.RWMutex
	byName    map[string]*entry
	byType    map[reflect.Type]*entry // T and *T of every registered T
	schemas   map[string]*avroSchema  // Avro schemas, current and older, by ID
	upcasters map[string]Upcaster
}

// entry is one registered type.
type entry struct {
	name        string
	contentType string
	avro        *avroSchema // current schema; nil for JSON
	encode      func(v any) ([]byte, error)
	decode      func(data []byte, writer *avroSchema) (any, error)
}

// RegistryOption configures a Registry.
type RegistryOption func(*Registry)

// WithMaxPayload sets the largest payload, in bytes, that Encode and
// Decode accept (default DefaultMaxPayload); n <= 0 removes the limit.
// A larger payload fails with a *PayloadTooLargeError, which matches
// orchestrix.ErrInvalid.
func WithMaxPayload(n int) RegistryOption { return func(r *Registry) { r.maxPayload = n } }

// NewRegistry returns an empty registry.
func NewRegistry(opts ...RegistryOption) *Registry {
	r := &Registry{
		maxPayload: DefaultMaxPayload,
		byName:     map[string]*entry{},
		byType:     map[reflect.Type]*entry{},
		schemas:    map[string]*avroSchema{},
		upcasters:  map[string]Upcaster{},
	}
	for _, o := range opts {
		if o != nil {
			o(r)
		}
	}
	return r
}

// RegisterJSON registers T under typeName, encoded with encoding/json
// (content type application/json). Decoding ignores unknown fields, so
// adding a field is a compatible change. A type name or Go type may be
// registered once; a second registration fails with ErrAlreadyRegistered.
func RegisterJSON[T any](r *Registry, typeName string) error {
	return r.register(reflect.TypeFor[T](), &entry{
		name:        typeName,
		contentType: ContentTypeJSON,
		encode:      func(v any) ([]byte, error) { return json.Marshal(v) },
		decode: func(data []byte, _ *avroSchema) (any, error) {
			var t T
			err := json.Unmarshal(data, &t)
			return t, err
		},
	})
}

func (r *Registry) register(goType reflect.Type, e *entry) error {
	if err := orchestrix.CheckID("type name", e.name); err != nil {
		return fmt.Errorf("codec: register %s: %w", goType, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byName[e.name]; ok {
		return fmt.Errorf("codec: register type %q: %w", e.name, ErrAlreadyRegistered)
	}
	if _, ok := r.upcasters[e.name]; ok {
		return fmt.Errorf("codec: register type %q: it has an upcaster: %w", e.name, ErrAlreadyRegistered)
	}
	ptr := reflect.PointerTo(goType)
	for _, t := range []reflect.Type{goType, ptr} {
		if o, ok := r.byType[t]; ok {
			return fmt.Errorf("codec: register %s as %q: already registered as %q: %w", goType, e.name, o.name, ErrAlreadyRegistered)
		}
	}
	r.byName[e.name] = e
	r.byType[goType], r.byType[ptr] = e, e
	if e.avro != nil {
		r.schemas[e.avro.id] = e.avro
	}
	return nil
}

// TypeNameOf returns the type name T (or *T) is registered under.
func TypeNameOf[T any](r *Registry) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.byType[reflect.TypeFor[T]()]
	if !ok {
		return "", false
	}
	return e.name, true
}

// Upcaster turns the payload of an old message type into a newer one on
// read, before decoding: it returns the new type name and its data. The
// content type stays the same. After an upcaster has run, Avro data is
// taken to be written with the new type's current schema.
type Upcaster func(contentType string, data []byte) (newType string, newData []byte, err error)

// RegisterUpcaster registers up for messages of fromType. Chains (v1 to
// v2 to v3) are followed on decode; a chain that returns to a type it has
// passed fails with a *DecodeError wrapping ErrUpcastLoop. fromType must
// not be a registered type, and has at most one upcaster.
func (r *Registry) RegisterUpcaster(fromType string, up Upcaster) error {
	if err := orchestrix.CheckID("type name", fromType); err != nil {
		return fmt.Errorf("codec: register upcaster: %w", err)
	}
	if up == nil {
		return fmt.Errorf("codec: register upcaster for %q: nil upcaster: %w", fromType, orchestrix.ErrInvalid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.upcasters[fromType]; ok {
		return fmt.Errorf("codec: register upcaster for %q: %w", fromType, ErrAlreadyRegistered)
	}
	if _, ok := r.byName[fromType]; ok {
		return fmt.Errorf("codec: register upcaster for %q: it is a registered type: %w", fromType, ErrAlreadyRegistered)
	}
	r.upcasters[fromType] = up
	return nil
}

// Encode encodes v, a registered T or *T, and returns its type name,
// content type, dataschema (the Avro writer-schema ID; "" for JSON) and
// bytes. A nil v fails with orchestrix.ErrInvalid, an unregistered type
// with orchestrix.ErrUnknownType, an oversized result with a
// *PayloadTooLargeError.
func (r *Registry) Encode(v any) (typeName, contentType, dataSchema string, data []byte, err error) {
	if v == nil {
		return "", "", "", nil, fmt.Errorf("codec: encode nil payload: %w", orchestrix.ErrInvalid)
	}
	t := reflect.TypeOf(v)
	r.mu.RLock()
	e := r.byType[t]
	r.mu.RUnlock()
	if e == nil {
		return "", "", "", nil, fmt.Errorf("codec: encode %s: %w", t, orchestrix.ErrUnknownType)
	}
	if t.Kind() == reflect.Pointer && reflect.ValueOf(v).IsNil() {
		return "", "", "", nil, fmt.Errorf("codec: encode nil %s: %w", t, orchestrix.ErrInvalid)
	}
	if data, err = e.encode(v); err != nil {
		return "", "", "", nil, fmt.Errorf("codec: encode %s: %w: %w", e.name, orchestrix.ErrInvalid, err)
	}
	if err := r.checkSize(len(data)); err != nil {
		return "", "", "", nil, fmt.Errorf("codec: encode %s: %w", e.name, err)
	}
	if e.avro != nil {
		dataSchema = e.avro.id
	}
	return e.name, e.contentType, dataSchema, data, nil
}

func (r *Registry) checkSize(n int) error {
	if r.maxPayload > 0 && n > r.maxPayload {
		return &PayloadTooLargeError{Size: n, Limit: r.maxPayload}
	}
	return nil
}

// Decode decodes data of typeName into its registered T and returns the
// T (a value, not a pointer). Upcasters run first. dataSchema selects the
// Avro writer schema ("" means the current one); JSON ignores it. An empty
// contentType is accepted; another must match the registered one
// (parameters aside). An unknown type fails with orchestrix.ErrUnknownType;
// bad data with a *DecodeError, which matches orchestrix.ErrInvalid.
func (r *Registry) Decode(typeName, contentType, dataSchema string, data []byte) (any, error) {
	d, err := r.decode(typeName, contentType, dataSchema, data)
	return d.value, err
}

// decoded is what decode found: the value and, after upcasting, the type,
// dataschema and data it was decoded from.
type decoded struct {
	typeName, dataSchema string
	data                 []byte
	value                any
	upcast               bool
}

func (r *Registry) decode(typeName, contentType, dataSchema string, data []byte) (decoded, error) {
	d := decoded{typeName: typeName, dataSchema: dataSchema, data: data}
	if err := r.checkSize(len(data)); err != nil {
		return d, &DecodeError{Type: typeName, Err: err}
	}
	var seen []string
	for {
		r.mu.RLock()
		up := r.upcasters[d.typeName]
		r.mu.RUnlock()
		if up == nil {
			break
		}
		if slices.Contains(seen, d.typeName) {
			return d, &DecodeError{Type: d.typeName, Err: fmt.Errorf("%w: %s -> %s", ErrUpcastLoop, strings.Join(seen, " -> "), d.typeName)}
		}
		seen = append(seen, d.typeName)
		nt, nd, err := up(contentType, d.data)
		if err == nil {
			err = orchestrix.CheckID("upcast type", nt)
		}
		if err == nil {
			err = r.checkSize(len(nd))
		}
		if err != nil {
			return d, &DecodeError{Type: d.typeName, Err: fmt.Errorf("upcast: %w", err)}
		}
		d.typeName, d.data, d.dataSchema, d.upcast = nt, nd, "", true
	}

	r.mu.RLock()
	e := r.byName[d.typeName]
	writer := r.schemas[d.dataSchema]
	r.mu.RUnlock()
	if e == nil {
		return d, fmt.Errorf("codec: decode %q: %w", d.typeName, orchestrix.ErrUnknownType)
	}
	if contentType != "" && !sameMediaType(contentType, e.contentType) {
		return d, &DecodeError{Type: e.name, Err: fmt.Errorf("content type %q, registered %q", contentType, e.contentType)}
	}
	if e.avro != nil {
		switch {
		case d.dataSchema == "":
			writer, d.dataSchema = e.avro, e.avro.id
		case writer == nil || writer.typeName != e.name:
			return d, &DecodeError{Type: e.name, Err: fmt.Errorf("%w: %q", ErrUnknownSchema, d.dataSchema)}
		}
	}
	v, err := e.decode(d.data, writer)
	if err != nil {
		return d, &DecodeError{Type: e.name, Err: err}
	}
	d.value = v
	return d, nil
}

// sameMediaType compares media types without parameters, ignoring case.
func sameMediaType(ct, registered string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(strings.TrimSpace(ct), registered)
}

// EncodeEvent encodes e.Payload and sets e.Type, e.ContentType, e.Data
// and, for Avro, e.Extensions[DataSchemaKey] (removing a stale one).
// Extensions is copied before it is changed, never modified in place.
func (r *Registry) EncodeEvent(e *orchestrix.Event) error {
	if e == nil {
		return fmt.Errorf("codec: encode nil event: %w", orchestrix.ErrInvalid)
	}
	typ, ct, ds, data, err := r.Encode(e.Payload)
	if err != nil {
		return err
	}
	e.Type, e.ContentType, e.Data = typ, ct, data
	e.Extensions = withDataSchema(e.Extensions, ds)
	return nil
}

// DecodeEvent decodes e.Data into e.Payload, reading the Avro writer
// schema from e.Extensions[DataSchemaKey]. When upcasters ran, e.Type,
// e.Data and the dataschema are updated to what was finally decoded, so
// the event stays consistent with its payload.
func (r *Registry) DecodeEvent(e *orchestrix.Event) error {
	if e == nil {
		return fmt.Errorf("codec: decode nil event: %w", orchestrix.ErrInvalid)
	}
	d, err := r.decode(e.Type, e.ContentType, e.Extensions[DataSchemaKey], e.Data)
	if err != nil {
		return err
	}
	e.Payload = d.value
	if d.upcast {
		e.Type, e.Data = d.typeName, d.data
		e.Extensions = withDataSchema(e.Extensions, d.dataSchema)
	}
	return nil
}

// EncodeCommand is EncodeEvent for a command.
func (r *Registry) EncodeCommand(c *orchestrix.Command) error {
	if c == nil {
		return fmt.Errorf("codec: encode nil command: %w", orchestrix.ErrInvalid)
	}
	typ, ct, ds, data, err := r.Encode(c.Payload)
	if err != nil {
		return err
	}
	c.Type, c.ContentType, c.Data = typ, ct, data
	c.Extensions = withDataSchema(c.Extensions, ds)
	return nil
}

// DecodeCommand is DecodeEvent for a command.
func (r *Registry) DecodeCommand(c *orchestrix.Command) error {
	if c == nil {
		return fmt.Errorf("codec: decode nil command: %w", orchestrix.ErrInvalid)
	}
	d, err := r.decode(c.Type, c.ContentType, c.Extensions[DataSchemaKey], c.Data)
	if err != nil {
		return err
	}
	c.Payload = d.value
	if d.upcast {
		c.Type, c.Data = d.typeName, d.data
		c.Extensions = withDataSchema(c.Extensions, d.dataSchema)
	}
	return nil
}

// withDataSchema returns ext with DataSchemaKey set to ds, or removed when
// ds is empty; it copies ext rather than change a map others may share.
func withDataSchema(ext map[string]string, ds string) map[string]string {
	cur, ok := ext[DataSchemaKey]
	if (!ok && ds == "") || (ok && cur == ds) {
		return ext
	}
	ext = maps.Clone(ext)
	if ds == "" {
		delete(ext, DataSchemaKey)
		return ext
	}
	if ext == nil {
		ext = make(map[string]string, 1)
	}
	ext[DataSchemaKey] = ds
	return ext
}
