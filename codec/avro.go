package codec

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/linkedin/goavro/v2"
	"github.com/orchestrix/orchestrix"
)

// RegisterAvro registers T under typeName, encoded as Avro binary with
// schema (content type application/avro).
//
// T travels through its JSON form: Encode marshals T with encoding/json
// and converts the result to goavro's native form guided by the schema;
// Decode reads the native form, converts it back and unmarshals it into T.
// So T's JSON field names must be the schema's field names; JSON fields the
// schema lacks are dropped; a missing field takes its default (or null in
// a union with null). bytes and fixed map to []byte; timestamp-millis,
// timestamp-micros and date to time.Time; time-millis and time-micros to
// time.Duration. Union branches are tried in schema order and the first
// that accepts the value is written. The decimal logical type is not
// supported.
//
// Encode reports the schema's ID as the dataschema,
// "avro:<typeName>:<Rabin fingerprint in hex>". To read data written with
// an older schema, register that schema with RegisterAvroSchema; Decode
// then resolves the writer schema to the current one by the Avro rules.
func RegisterAvro[T any](r *Registry, typeName, schema string) error {
	s, err := newAvroSchema(typeName, schema)
	if err != nil {
		return err
	}
	return r.register(reflect.TypeFor[T](), &entry{
		name:        typeName,
		contentType: ContentTypeAvro,
		avro:        s,
		encode:      s.encode,
		decode: func(data []byte, writer *avroSchema) (any, error) {
			var t T
			err := s.decode(data, writer, &t)
			return t, err
		},
	})
}

// RegisterAvroSchema registers an older writer schema of typeName, which
// must be registered with RegisterAvro. Data written with it is decoded
// with it, then resolved to the current schema: fields the current schema
// lacks are dropped, fields the old one lacks take their defaults, int and
// long widen, enum symbols map to the reader's default. A schema the
// current one cannot read (a new field without default, say) is refused
// with an error matching orchestrix.ErrInvalid. Registering a schema
// twice is a no-op.
func (r *Registry) RegisterAvroSchema(typeName, schema string) error {
	s, err := newAvroSchema(typeName, schema)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.byName[typeName]
	switch {
	case e == nil:
		return fmt.Errorf("codec: register Avro schema for %q: %w", typeName, orchestrix.ErrUnknownType)
	case e.avro == nil:
		return fmt.Errorf("codec: register Avro schema for %q: registered as %s: %w", typeName, e.contentType, orchestrix.ErrInvalid)
	}
	if _, ok := r.schemas[s.id]; ok {
		return nil
	}
	if err := compatible(s.root, e.avro.root, map[[2]*avroType]bool{}); err != nil {
		return fmt.Errorf("codec: Avro schema %s cannot be read as %s: %w: %w", s.id, e.avro.id, orchestrix.ErrInvalid, err)
	}
	r.schemas[s.id] = s
	return nil
}

// avroSchema is one parsed schema of one type name.
type avroSchema struct {
	typeName string
	id       string
	codec    *goavro.Codec
	root     *avroType
}

func newAvroSchema(typeName, schema string) (*avroSchema, error) {
	if err := orchestrix.CheckID("type name", typeName); err != nil {
		return nil, fmt.Errorf("codec: register Avro schema: %w", err)
	}
	root, err := parseAvro(schema)
	if err == nil {
		var c *goavro.Codec
		if c, err = goavro.NewCodec(schema); err == nil {
			id := "avro:" + url.PathEscape(typeName) + ":" + fmt.Sprintf("%016x", c.Rabin)
			return &avroSchema{typeName: typeName, id: id, codec: c, root: root}, nil
		}
	}
	return nil, fmt.Errorf("codec: Avro schema for %q: %w: %w", typeName, orchestrix.ErrInvalid, err)
}

func (s *avroSchema) encode(v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var plain any
	if err := dec.Decode(&plain); err != nil {
		return nil, err
	}
	native, err := toNative(s.root, plain)
	if err != nil {
		return nil, err
	}
	return s.codec.BinaryFromNative(nil, native)
}

// decode reads data written with writer's schema into out, resolving it to
// s's schema.
func (s *avroSchema) decode(data []byte, writer *avroSchema, out any) error {
	if err := scanAvro(writer.root, data); err != nil {
		return err
	}
	native, _, err := writer.codec.NativeFromBinary(data)
	if err != nil {
		return err
	}
	plain, err := resolve(writer.root, s.root, native)
	if err != nil {
		return err
	}
	j, err := json.Marshal(plain)
	if err != nil {
		return err
	}
	return json.Unmarshal(j, out)
}

// avroType is the part of a parsed Avro schema that conversion and
// resolution need.
type avroType struct {
	kind     string // a primitive, "record", "enum", "fixed", "array", "map" or "union"
	logical  string // a logical type goavro implements, else ""
	name     string // full name of a record, enum or fixed
	aliases  []string
	fields   []avroField
	symbols  []string
	enumDef  *string
	size     int
	items    *avroType // array items, map values
	branches []*avroType
}

type avroField struct {
	name    string
	aliases []string
	typ     *avroType
	def     any
	hasDef  bool
}

// branch is the key goavro uses for t in a union's native form.
func (t *avroType) branch() string {
	switch {
	case t.name != "":
		return t.name
	case t.logical != "":
		return t.kind + "." + t.logical
	}
	return t.kind
}

var avroPrimitives = []string{"null", "boolean", "int", "long", "float", "double", "bytes", "string"}

// logicalTypes are the logical types goavro implements, by base type.
var logicalTypes = map[string][]string{
	"int":  {"date", "time-millis"},
	"long": {"timestamp-millis", "timestamp-micros", "time-micros"},
}

func parseAvro(schema string) (*avroType, error) {
	dec := json.NewDecoder(strings.NewReader(schema))
	dec.UseNumber()
	var s any
	if err := dec.Decode(&s); err != nil {
		return nil, err
	}
	p := avroParser{named: map[string]*avroType{}}
	return p.parse(s, "")
}

type avroParser struct{ named map[string]*avroType }

func (p *avroParser) parse(s any, ns string) (*avroType, error) {
	switch s := s.(type) {
	case string:
		if slices.Contains(avroPrimitives, s) {
			return &avroType{kind: s}, nil
		}
		if t := p.named[fullName(s, ns)]; t != nil {
			return t, nil
		}
		if t := p.named[s]; t != nil {
			return t, nil
		}
		return nil, fmt.Errorf("unknown type %q", s)
	case []any:
		u := &avroType{kind: "union"}
		for _, b := range s {
			t, err := p.parse(b, ns)
			if err != nil {
				return nil, err
			}
			u.branches = append(u.branches, t)
		}
		return u, nil
	case map[string]any:
		return p.parseMap(s, ns)
	}
	return nil, fmt.Errorf("schema element is %T", s)
}

func (p *avroParser) parseMap(m map[string]any, ns string) (*avroType, error) {
	kind, ok := m["type"].(string)
	if !ok {
		return p.parse(m["type"], ns)
	}
	lt, _ := m["logicalType"].(string)
	if lt == "decimal" {
		return nil, fmt.Errorf("logical type decimal is not supported")
	}
	t := &avroType{kind: kind}
	switch kind {
	case "record", "error", "enum", "fixed":
		name, _ := m["name"].(string)
		if name == "" {
			return nil, fmt.Errorf("%s without a name", kind)
		}
		if n, ok := m["namespace"].(string); ok && !strings.Contains(name, ".") {
			ns = n
		}
		t.name = fullName(name, ns)
		if i := strings.LastIndexByte(t.name, '.'); i >= 0 {
			ns = t.name[:i]
		} else {
			ns = ""
		}
		t.aliases = aliases(m, ns)
		p.named[t.name] = t // before the fields, for recursive types
	}
	switch kind {
	case "record", "error":
		t.kind = "record"
		fields, _ := m["fields"].([]any)
		for _, f := range fields {
			fm, ok := f.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("record %s: field is %T", t.name, f)
			}
			name, _ := fm["name"].(string)
			ft, err := p.parse(fm["type"], ns)
			if err != nil {
				return nil, fmt.Errorf("record %s field %q: %w", t.name, name, err)
			}
			def, hasDef := fm["default"]
			t.fields = append(t.fields, avroField{name: name, aliases: aliases(fm, ""), typ: ft, def: def, hasDef: hasDef})
		}
	case "enum":
		syms, _ := m["symbols"].([]any)
		for _, s := range syms {
			if s, ok := s.(string); ok {
				t.symbols = append(t.symbols, s)
			}
		}
		if d, ok := m["default"].(string); ok {
			t.enumDef = &d
		}
	case "fixed":
		n, _ := m["size"].(json.Number)
		size, err := strconv.Atoi(string(n))
		if err != nil {
			return nil, fmt.Errorf("fixed %s: size %v", t.name, m["size"])
		}
		t.size = size
	case "array", "map":
		key := "items"
		if kind == "map" {
			key = "values"
		}
		items, err := p.parse(m[key], ns)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		t.items = items
	default:
		if !slices.Contains(avroPrimitives, kind) {
			return p.parse(kind, ns)
		}
		if slices.Contains(logicalTypes[kind], lt) {
			t.logical = lt
		}
	}
	return t, nil
}

func fullName(name, ns string) string {
	if ns == "" || strings.Contains(name, ".") {
		return name
	}
	return ns + "." + name
}

func aliases(m map[string]any, ns string) []string {
	as, _ := m["aliases"].([]any)
	var out []string
	for _, a := range as {
		if a, ok := a.(string); ok {
			out = append(out, fullName(a, ns))
		}
	}
	return out
}

// toNative converts v, decoded from JSON with UseNumber, to goavro's
// native form of t.
func toNative(t *avroType, v any) (any, error) {
	mismatch := func() (any, error) { return nil, fmt.Errorf("want %s, got %s", t.kind, jsonKind(v)) }
	switch t.kind {
	case "null":
		if v != nil {
			return mismatch()
		}
		return nil, nil
	case "boolean":
		if b, ok := v.(bool); ok {
			return b, nil
		}
	case "int", "long":
		if s, ok := v.(string); ok && t.logical != "" && !strings.HasPrefix(t.logical, "time-") {
			layout := time.RFC3339Nano
			if t.logical == "date" && len(s) == len(time.DateOnly) {
				layout = time.DateOnly
			}
			return time.Parse(layout, s)
		}
		n, ok := v.(json.Number)
		if !ok {
			return mismatch()
		}
		bits := 64
		if t.kind == "int" && t.logical == "" {
			bits = 32
		}
		i, err := strconv.ParseInt(string(n), 10, bits)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%s: %w", t.kind, err)
		case strings.HasPrefix(t.logical, "time-"):
			return time.Duration(i), nil
		case bits == 32:
			return int32(i), nil
		}
		return i, nil
	case "float", "double":
		n, ok := v.(json.Number)
		if !ok {
			return mismatch()
		}
		if t.kind == "float" {
			f, err := strconv.ParseFloat(string(n), 32)
			return float32(f), err
		}
		return strconv.ParseFloat(string(n), 64)
	case "string", "enum":
		if s, ok := v.(string); ok {
			if t.kind == "enum" && !slices.Contains(t.symbols, s) {
				return nil, fmt.Errorf("%q is not a symbol of enum %s", s, t.name)
			}
			return s, nil
		}
	case "bytes", "fixed":
		s, ok := v.(string)
		if !ok {
			return mismatch()
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err == nil && t.kind == "fixed" && len(b) != t.size {
			err = fmt.Errorf("fixed %s holds %d bytes, got %d", t.name, t.size, len(b))
		}
		return b, err
	case "array":
		xs, ok := v.([]any)
		if !ok && v != nil {
			return mismatch()
		}
		out := make([]any, len(xs))
		for i, x := range xs {
			var err error
			if out[i], err = toNative(t.items, x); err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return out, nil
	case "map":
		m, ok := v.(map[string]any)
		if !ok && v != nil {
			return mismatch()
		}
		out := make(map[string]any, len(m))
		for k, x := range m {
			var err error
			if out[k], err = toNative(t.items, x); err != nil {
				return nil, fmt.Errorf("[%q]: %w", k, err)
			}
		}
		return out, nil
	case "record":
		m, ok := v.(map[string]any)
		if !ok {
			return mismatch()
		}
		out := make(map[string]any, len(t.fields))
		for _, f := range t.fields {
			x, ok := m[f.name]
			switch {
			case (!ok || x == nil) && f.hasDef && !f.typ.acceptsNull():
				continue // goavro writes the default
			case !ok && f.typ.acceptsNull():
				out[f.name] = nil
				continue
			case !ok:
				return nil, fmt.Errorf("field %q is missing and has no default", f.name)
			}
			n, err := toNative(f.typ, x)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f.name, err)
			}
			out[f.name] = n
		}
		return out, nil
	case "union":
		if v == nil {
			if !t.acceptsNull() {
				return mismatch()
			}
			return nil, nil
		}
		for _, b := range t.branches {
			if b.kind == "null" {
				continue
			}
			if n, err := toNative(b, v); err == nil {
				return goavro.Union(b.branch(), n), nil
			}
		}
		return nil, fmt.Errorf("no branch of union %s accepts %s", t.describe(), jsonKind(v))
	}
	return mismatch()
}

func (t *avroType) acceptsNull() bool {
	if t.kind == "null" {
		return true
	}
	return t.kind == "union" && slices.ContainsFunc(t.branches, func(b *avroType) bool { return b.kind == "null" })
}

func (t *avroType) describe() string {
	if t.kind != "union" {
		return t.branch()
	}
	names := make([]string, len(t.branches))
	for i, b := range t.branches {
		names[i] = b.branch()
	}
	return "[" + strings.Join(names, ",") + "]"
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// matches reports whether data written as w can be read as r, looking no
// deeper than names (the Avro rule for picking a reader union branch).
func matches(w, r *avroType) bool {
	if w.kind == r.kind {
		if w.name == "" {
			return true
		}
		return shortName(w.name) == shortName(r.name) || slices.Contains(r.aliases, w.name)
	}
	switch w.kind {
	case "int":
		return r.kind == "long" || r.kind == "float" || r.kind == "double"
	case "long":
		return r.kind == "float" || r.kind == "double"
	case "float":
		return r.kind == "double"
	case "string":
		return r.kind == "bytes"
	case "bytes":
		return r.kind == "string"
	}
	return false
}

func shortName(n string) string { return n[strings.LastIndexByte(n, '.')+1:] }

func (t *avroType) field(name string, aliases []string) *avroField {
	for i := range t.fields {
		if f := &t.fields[i]; f.name == name || slices.Contains(aliases, f.name) {
			return f
		}
	}
	return nil
}

// compatible reports why data of schema w cannot always be read as r.
func compatible(w, r *avroType, seen map[[2]*avroType]bool) error {
	if seen[[2]*avroType{w, r}] {
		return nil
	}
	seen[[2]*avroType{w, r}] = true
	if w.kind == "union" {
		for _, b := range w.branches {
			if err := compatible(b, r, seen); err != nil {
				return err
			}
		}
		return nil
	}
	if r.kind == "union" {
		for _, b := range r.branches {
			if matches(w, b) {
				return compatible(w, b, seen)
			}
		}
		return fmt.Errorf("%s matches no branch of %s", w.describe(), r.describe())
	}
	if !matches(w, r) {
		return fmt.Errorf("%s cannot be read as %s", w.describe(), r.describe())
	}
	switch r.kind {
	case "record":
		for _, rf := range r.fields {
			wf := w.field(rf.name, rf.aliases)
			switch {
			case wf != nil:
				if err := compatible(wf.typ, rf.typ, seen); err != nil {
					return fmt.Errorf("%s.%s: %w", r.name, rf.name, err)
				}
			case !rf.hasDef:
				return fmt.Errorf("field %s.%s is new and has no default", r.name, rf.name)
			}
		}
	case "array", "map":
		return compatible(w.items, r.items, seen)
	case "enum":
		for _, s := range w.symbols {
			if !slices.Contains(r.symbols, s) && r.enumDef == nil {
				return fmt.Errorf("enum %s lacks symbol %q and has no default", r.name, s)
			}
		}
	case "fixed":
		if w.size != r.size {
			return fmt.Errorf("fixed %s: size %d, writer %d", r.name, r.size, w.size)
		}
	}
	return nil
}

// resolve converts v, goavro's native form of writer type w, to the plain
// (JSON-ready) form of reader type r, following Avro schema resolution.
func resolve(w, r *avroType, v any) (any, error) {
	if w.kind == "union" {
		b, x, err := unionBranch(w, v)
		if err != nil {
			return nil, err
		}
		w, v = b, x
	}
	if r.kind == "union" {
		for _, b := range r.branches {
			if matches(w, b) {
				return resolve(w, b, v)
			}
		}
		return nil, fmt.Errorf("%s matches no branch of %s", w.describe(), r.describe())
	}
	if !matches(w, r) {
		return nil, fmt.Errorf("%s cannot be read as %s", w.describe(), r.describe())
	}
	bad := func() (any, error) { return nil, fmt.Errorf("%s: unexpected %T", r.describe(), v) }
	switch r.kind {
	case "long", "float", "double":
		switch n := v.(type) {
		case int32:
			return promote(r.kind, int64(n)), nil
		case int64:
			return promote(r.kind, n), nil
		case float32:
			if r.kind == "double" {
				return float64(n), nil
			}
		}
	case "string":
		if b, ok := v.([]byte); ok {
			return string(b), nil
		}
	case "bytes":
		if s, ok := v.(string); ok {
			return []byte(s), nil
		}
	case "enum":
		s, ok := v.(string)
		if !ok {
			return bad()
		}
		if !slices.Contains(r.symbols, s) {
			if r.enumDef == nil {
				return nil, fmt.Errorf("enum %s lacks symbol %q and has no default", r.name, s)
			}
			return *r.enumDef, nil
		}
		return s, nil
	case "array":
		xs, ok := v.([]any)
		if !ok {
			return bad()
		}
		out := make([]any, len(xs))
		for i, x := range xs {
			var err error
			if out[i], err = resolve(w.items, r.items, x); err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return out, nil
	case "map":
		m, ok := v.(map[string]any)
		if !ok {
			return bad()
		}
		out := make(map[string]any, len(m))
		for k, x := range m {
			var err error
			if out[k], err = resolve(w.items, r.items, x); err != nil {
				return nil, fmt.Errorf("[%q]: %w", k, err)
			}
		}
		return out, nil
	case "record":
		m, ok := v.(map[string]any)
		if !ok {
			return bad()
		}
		out := make(map[string]any, len(r.fields))
		for _, rf := range r.fields {
			var x any
			var err error
			switch wf := w.field(rf.name, rf.aliases); {
			case wf != nil:
				x, err = resolve(wf.typ, rf.typ, m[wf.name])
			case rf.hasDef:
				x, err = defaultValue(rf.typ, rf.def)
			default:
				err = fmt.Errorf("absent from the writer schema and has no default")
			}
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", r.name, rf.name, err)
			}
			out[rf.name] = x
		}
		return out, nil
	}
	return v, nil
}

func promote(kind string, n int64) any {
	switch kind {
	case "float":
		return float32(n)
	case "double":
		return float64(n)
	}
	return n
}

// unionBranch finds the branch of union u that goavro's native v holds.
func unionBranch(u *avroType, v any) (*avroType, any, error) {
	if v == nil {
		for _, b := range u.branches {
			if b.kind == "null" {
				return b, nil, nil
			}
		}
	}
	if m, ok := v.(map[string]any); ok && len(m) == 1 {
		for k, x := range m {
			for _, b := range u.branches {
				if b.branch() == k {
					return b, x, nil
				}
			}
		}
	}
	return nil, nil, fmt.Errorf("union %s: unexpected %T", u.describe(), v)
}

// defaultValue converts the JSON default d of a field of type t to the
// plain form.
func defaultValue(t *avroType, d any) (any, error) {
	bad := func() (any, error) { return nil, fmt.Errorf("default %v is not a %s", d, t.describe()) }
	switch t.kind {
	case "union":
		if len(t.branches) == 0 {
			return bad()
		}
		return defaultValue(t.branches[0], d)
	case "null":
		if d != nil {
			return bad()
		}
		return nil, nil
	case "int", "long", "float", "double":
		n, ok := d.(json.Number)
		if !ok {
			return bad()
		}
		if t.logical == "" {
			return n, nil
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return bad()
		}
		switch t.logical {
		case "date":
			return time.Unix(i*86400, 0).UTC(), nil
		case "timestamp-millis":
			return time.UnixMilli(i).UTC(), nil
		case "timestamp-micros":
			return time.UnixMicro(i).UTC(), nil
		case "time-millis":
			return time.Duration(i) * time.Millisecond, nil
		}
		return time.Duration(i) * time.Microsecond, nil
	case "bytes", "fixed":
		s, ok := d.(string)
		if !ok {
			return bad()
		}
		b := make([]byte, 0, len(s))
		for _, c := range s {
			if c > 0xff {
				return bad()
			}
			b = append(b, byte(c))
		}
		return b, nil
	case "array":
		xs, ok := d.([]any)
		if !ok {
			return bad()
		}
		out := make([]any, len(xs))
		for i, x := range xs {
			var err error
			if out[i], err = defaultValue(t.items, x); err != nil {
				return nil, err
			}
		}
		return out, nil
	case "map", "record":
		m, ok := d.(map[string]any)
		if !ok {
			return bad()
		}
		out := make(map[string]any, len(m))
		if t.kind == "map" {
			for k, x := range m {
				var err error
				if out[k], err = defaultValue(t.items, x); err != nil {
					return nil, err
				}
			}
			return out, nil
		}
		for _, f := range t.fields {
			x, ok := m[f.name]
			if !ok && !f.hasDef {
				return nil, fmt.Errorf("default of %s lacks field %q", t.name, f.name)
			} else if !ok {
				x = f.def
			}
			var err error
			if out[f.name], err = defaultValue(f.typ, x); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return d, nil // boolean, string, enum
}

// maxAvroDepth bounds the nesting of records, unions, arrays and maps in
// one datum.
const maxAvroDepth = 1000

// scanAvro checks that data is exactly one datum of t, every length and
// block count within the bytes left and nesting within maxAvroDepth,
// before goavro allocates by what the data claims (it sizes an array by
// its block count). So an array may hold no more items than it has bytes
// left, even items of zero bytes such as null.
func scanAvro(t *avroType, data []byte) error {
	s := avroScanner{buf: data}
	if err := s.scan(t, 0); err != nil {
		return err
	}
	if len(s.buf) > 0 {
		return fmt.Errorf("%d bytes after the datum", len(s.buf))
	}
	return nil
}

type avroScanner struct{ buf []byte }

func (s *avroScanner) long() (int64, error) {
	v, n := binary.Varint(s.buf)
	if n <= 0 {
		return 0, fmt.Errorf("bad varint at %d bytes from the end", len(s.buf))
	}
	s.buf = s.buf[n:]
	return v, nil
}

func (s *avroScanner) skip(n int64) error {
	if n < 0 || n > int64(len(s.buf)) {
		return fmt.Errorf("length %d with %d bytes left", n, len(s.buf))
	}
	s.buf = s.buf[n:]
	return nil
}

func (s *avroScanner) scan(t *avroType, depth int) error {
	if depth > maxAvroDepth {
		return fmt.Errorf("nested deeper than %d", maxAvroDepth)
	}
	switch t.kind {
	case "boolean":
		return s.skip(1)
	case "int", "long", "enum":
		_, err := s.long()
		return err
	case "float":
		return s.skip(4)
	case "double":
		return s.skip(8)
	case "fixed":
		return s.skip(int64(t.size))
	case "bytes", "string":
		n, err := s.long()
		if err == nil {
			err = s.skip(n)
		}
		return err
	case "union":
		i, err := s.long()
		if err != nil {
			return err
		}
		if i < 0 || i >= int64(len(t.branches)) {
			return fmt.Errorf("union branch %d of %d", i, len(t.branches))
		}
		return s.scan(t.branches[i], depth+1)
	case "record":
		for _, f := range t.fields {
			if err := s.scan(f.typ, depth+1); err != nil {
				return err
			}
		}
	case "array", "map":
		for {
			n, err := s.long()
			if err != nil || n == 0 {
				return err
			}
			if n < 0 { // a block size follows
				if _, err := s.long(); err != nil {
					return err
				}
				n = -n
			}
			if n < 0 || n > int64(len(s.buf)) {
				return fmt.Errorf("block of %d items with %d bytes left", n, len(s.buf))
			}
			for range n {
				if t.kind == "map" { // the key, a string
					if k, err := s.long(); err != nil || s.skip(k) != nil {
						return fmt.Errorf("bad map key with %d bytes left", len(s.buf))
					}
				}
				if err := s.scan(t.items, depth+1); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
