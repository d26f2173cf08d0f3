package esdbtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"sort"
)

// schema is the JSON Schema subset the double checks: type, properties,
// required, additionalProperties (false or a schema), items and enum.
type schema struct {
	types      []string
	properties map[string]*schema
	required   []string
	additional *bool
	addSchema  *schema
	items      *schema
	enum       []any
}

func parseSchema(raw json.RawMessage) (*schema, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("schema must be a JSON object")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	s := &schema{}
	if t, ok := m["type"]; ok {
		var one string
		if err := json.Unmarshal(t, &one); err == nil {
			s.types = []string{one}
		} else if err := json.Unmarshal(t, &s.types); err != nil {
			return nil, fmt.Errorf("type must be a string or an array of strings")
		}
		for _, typ := range s.types {
			switch typ {
			case "object", "array", "string", "number", "integer", "boolean", "null":
			default:
				return nil, fmt.Errorf("unknown type %q", typ)
			}
		}
	}
	if p, ok := m["properties"]; ok {
		var props map[string]json.RawMessage
		if err := json.Unmarshal(p, &props); err != nil {
			return nil, fmt.Errorf("properties must be an object")
		}
		s.properties = map[string]*schema{}
		for k, v := range props {
			sub, err := parseSchema(v)
			if err != nil {
				return nil, fmt.Errorf("properties.%s: %w", k, err)
			}
			s.properties[k] = sub
		}
	}
	if r, ok := m["required"]; ok {
		if err := json.Unmarshal(r, &s.required); err != nil {
			return nil, fmt.Errorf("required must be an array of strings")
		}
	}
	if a, ok := m["additionalProperties"]; ok {
		var b bool
		if err := json.Unmarshal(a, &b); err == nil {
			s.additional = &b
		} else {
			sub, err := parseSchema(a)
			if err != nil {
				return nil, fmt.Errorf("additionalProperties: %w", err)
			}
			s.addSchema = sub
		}
	}
	if it, ok := m["items"]; ok {
		sub, err := parseSchema(it)
		if err != nil {
			return nil, fmt.Errorf("items: %w", err)
		}
		s.items = sub
	}
	if e, ok := m["enum"]; ok {
		if err := json.Unmarshal(e, &s.enum); err != nil {
			return nil, fmt.Errorf("enum must be an array")
		}
	}
	return s, nil
}

func (s *schema) validate(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	return s.check(v, "data")
}

func jsonType(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		if x == math.Trunc(x) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}

func (s *schema) check(v any, path string) error {
	if len(s.types) > 0 {
		got := jsonType(v)
		ok := false
		for _, t := range s.types {
			if t == got || (t == "number" && got == "integer") {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%s: expected %v, got %s", path, s.types, got)
		}
	}
	if len(s.enum) > 0 {
		ok := false
		for _, e := range s.enum {
			if reflect.DeepEqual(e, v) {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%s: value is not in enum", path)
		}
	}
	switch x := v.(type) {
	case map[string]any:
		for _, r := range s.required {
			if _, ok := x[r]; !ok {
				return fmt.Errorf("%s: missing required property %q", path, r)
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if sub, ok := s.properties[k]; ok {
				if err := sub.check(x[k], path+"."+k); err != nil {
					return err
				}
				continue
			}
			if s.additional != nil && !*s.additional {
				return fmt.Errorf("%s: additional property %q is not allowed", path, k)
			}
			if s.addSchema != nil {
				if err := s.addSchema.check(x[k], path+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if s.items != nil {
			for i, e := range x {
				if err := s.items.check(e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
