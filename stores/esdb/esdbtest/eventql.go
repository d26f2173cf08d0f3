package esdbtest

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// RunEventQL runs query over the stored events and returns its rows, as
// run-eventql-query would stream them. The double implements this subset
// of EventQL (keywords are case-insensitive, // and /* */ comments are
// allowed):
//
//	FROM <alias> IN events
//	[WHERE <condition>]
//	[GROUP BY <expression> [HAVING <condition>]]
//	[ORDER BY <expression> [ASC | DESC]]
//	[SKIP <integer>]
//	[TOP <integer>]
//	PROJECT INTO [DISTINCT] <projection>
//
// Expressions are string literals ("..." or '...'), numbers, true, false,
// null, field paths from the alias (e.id, e.subject, e.type, e.time,
// e.data.some.field; a missing field is null), object literals
// ({ id: e.id, title: e.data.title }), the aggregates COUNT() and
// UNIQUE(<expression>), comparisons (==, !=, <, <=, >, >=), AND, OR, NOT
// and parentheses. Numbers compare numerically, strings lexically, and a
// number compared with a string of digits (such as an event ID)
// numerically; <, <=, > and >= with null are false, and ORDER BY sorts
// null first. Without GROUP BY, a projection that contains COUNT() yields
// one row computed over all matching events, so "PROJECT INTO COUNT() ==
// 0" is a boolean query fit for the isEventQlQueryTrue precondition. With
// GROUP BY, the matching events form one group per value of its
// expression (in the order of each group's first event), HAVING keeps the
// groups its condition holds for, and the projection yields one row per
// group; there, fields must be inside an aggregate: COUNT() is the
// group's size and UNIQUE(x) the value x has for all its events (an
// error when they differ), e.g. "GROUP BY e.type PROJECT INTO { type:
// UNIQUE(e.type), count: COUNT() }". A WHERE or HAVING condition that is
// not a boolean is an error. Not supported: several FROM clauses, the
// subjects and eventtypes sources, subqueries, ORDER BY together with
// GROUP BY, and functions other than COUNT and UNIQUE; the double answers
// them with 400 (v1) or a query-malformed error (v2).
func (s *Server) RunEventQL(query string) ([]any, error) {
	q, err := parseQuery(query)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	n := len(s.events)
	snapshot := s.events[:n:n]
	s.mu.Unlock()
	var rows []any
	err = q.run(snapshot, func(row any) bool { rows = append(rows, row); return true })
	return rows, err
}

type tokKind int

const (
	tkEOF tokKind = iota
	tkIdent
	tkString
	tkNumber
	tkPunct
)

type token struct {
	kind tokKind
	text string
	pos  int
}

func lex(src string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case strings.HasPrefix(src[i:], "//"):
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case strings.HasPrefix(src[i:], "/*"):
			end := strings.Index(src[i+2:], "*/")
			if end < 0 {
				return nil, fmt.Errorf("eventql: unterminated comment at %d", i)
			}
			i += end + 4
		case c == '"' || c == '\'':
			j := i + 1
			var b strings.Builder
			for ; j < len(src) && src[j] != c; j++ {
				if src[j] == '\\' && j+1 < len(src) {
					j++
				}
				b.WriteByte(src[j])
			}
			if j >= len(src) {
				return nil, fmt.Errorf("eventql: unterminated string at %d", i)
			}
			toks = append(toks, token{tkString, b.String(), i})
			i = j + 1
		case c >= '0' && c <= '9':
			j := i
			for j < len(src) && (src[j] >= '0' && src[j] <= '9' || src[j] == '.') {
				j++
			}
			toks = append(toks, token{tkNumber, src[i:j], i})
			i = j
		case c == '_' || unicode.IsLetter(rune(c)):
			j := i
			for j < len(src) && (src[j] == '_' || unicode.IsLetter(rune(src[j])) || src[j] >= '0' && src[j] <= '9') {
				j++
			}
			toks = append(toks, token{tkIdent, src[i:j], i})
			i = j
		default:
			two := ""
			if i+1 < len(src) {
				two = src[i : i+2]
			}
			switch two {
			case "==", "!=", "<=", ">=":
				toks = append(toks, token{tkPunct, two, i})
				i += 2
				continue
			}
			if strings.ContainsRune("(){},:.<>-", rune(c)) {
				toks = append(toks, token{tkPunct, string(c), i})
				i++
				continue
			}
			return nil, fmt.Errorf("eventql: unexpected character %q at %d", c, i)
		}
	}
	return append(toks, token{tkEOF, "", len(src)}), nil
}

// expr is a node of an EventQL expression.
type expr interface{}

type (
	litExpr    struct{ v any }
	pathExpr   struct{ parts []string }
	countExpr  struct{}
	uniqueExpr struct{ x expr }
	notExpr    struct{ x expr }
	binExpr    struct {
		op   string
		l, r expr
	}
	objExpr struct {
		keys []string
		vals []expr
	}
)

type query struct {
	alias    string
	where    expr
	groupBy  expr
	having   expr
	orderBy  expr
	desc     bool
	skip     int
	top      int // -1: no limit
	distinct bool
	project  expr
}

type parser struct {
	toks []token
	i    int
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tkEOF {
		p.i++
	}
	return t
}

func (p *parser) isKeyword(kw string) bool {
	t := p.peek()
	return t.kind == tkIdent && strings.EqualFold(t.text, kw)
}

func (p *parser) keyword(kw string) error {
	if !p.isKeyword(kw) {
		t := p.peek()
		return fmt.Errorf("eventql: expected %s at %d, found %q", kw, t.pos, t.text)
	}
	p.next()
	return nil
}

func (p *parser) punct(s string) bool {
	if t := p.peek(); t.kind == tkPunct && t.text == s {
		p.next()
		return true
	}
	return false
}

func (p *parser) integer(what string) (int, error) {
	t := p.next()
	n, err := strconv.Atoi(t.text)
	if t.kind != tkNumber || err != nil || n < 0 {
		return 0, fmt.Errorf("eventql: %s expects a non-negative integer at %d, found %q", what, t.pos, t.text)
	}
	return n, nil
}

func parseQuery(src string) (*query, error) {
	if strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("eventql: query is empty")
	}
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	q := &query{top: -1}
	if err := p.keyword("FROM"); err != nil {
		return nil, err
	}
	alias := p.next()
	if alias.kind != tkIdent {
		return nil, fmt.Errorf("eventql: expected an alias after FROM at %d", alias.pos)
	}
	q.alias = alias.text
	if err := p.keyword("IN"); err != nil {
		return nil, err
	}
	src0 := p.next()
	if src0.kind != tkIdent || !strings.EqualFold(src0.text, "events") {
		return nil, fmt.Errorf("eventql: esdbtest supports only the source events, found %q", src0.text)
	}
	if p.isKeyword("FROM") {
		return nil, fmt.Errorf("eventql: esdbtest does not support several FROM clauses")
	}
	if p.isKeyword("WHERE") {
		p.next()
		if q.where, err = p.expression(); err != nil {
			return nil, err
		}
	}
	if p.isKeyword("GROUP") {
		p.next()
		if err := p.keyword("BY"); err != nil {
			return nil, err
		}
		if q.groupBy, err = p.expression(); err != nil {
			return nil, err
		}
		if p.isKeyword("HAVING") {
			p.next()
			if q.having, err = p.expression(); err != nil {
				return nil, err
			}
		}
	}
	if p.isKeyword("HAVING") {
		return nil, fmt.Errorf("eventql: HAVING needs GROUP BY")
	}
	if p.isKeyword("ORDER") {
		if q.groupBy != nil {
			return nil, fmt.Errorf("eventql: esdbtest does not support ORDER BY with GROUP BY")
		}
		p.next()
		if err := p.keyword("BY"); err != nil {
			return nil, err
		}
		if q.orderBy, err = p.expression(); err != nil {
			return nil, err
		}
		if p.isKeyword("DESC") {
			p.next()
			q.desc = true
		} else if p.isKeyword("ASC") {
			p.next()
		}
	}
	if p.isKeyword("GROUP") || p.isKeyword("HAVING") {
		return nil, fmt.Errorf("eventql: GROUP BY and HAVING come before ORDER BY")
	}
	if p.isKeyword("SKIP") {
		p.next()
		if q.skip, err = p.integer("SKIP"); err != nil {
			return nil, err
		}
	}
	if p.isKeyword("TOP") {
		p.next()
		if q.top, err = p.integer("TOP"); err != nil {
			return nil, err
		}
	}
	if err := p.keyword("PROJECT"); err != nil {
		return nil, err
	}
	if err := p.keyword("INTO"); err != nil {
		return nil, err
	}
	if p.isKeyword("DISTINCT") {
		p.next()
		q.distinct = true
	}
	if q.project, err = p.expression(); err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tkEOF {
		return nil, fmt.Errorf("eventql: unexpected %q at %d", t.text, t.pos)
	}
	for _, e := range []expr{q.where, q.groupBy, q.having, q.orderBy, q.project} {
		if err := checkPaths(e, q.alias); err != nil {
			return nil, err
		}
	}
	if hasCount(q.where) || hasCount(q.orderBy) || hasCount(q.groupBy) {
		return nil, fmt.Errorf("eventql: aggregates (COUNT, UNIQUE) are allowed only in PROJECT INTO and HAVING")
	}
	if q.groupBy != nil {
		for _, e := range []expr{q.having, q.project} {
			if bare(e) {
				return nil, fmt.Errorf("eventql: with GROUP BY, fields must be inside an aggregate such as UNIQUE(…)")
			}
		}
	}
	return q, nil
}

func checkPaths(e expr, alias string) error {
	switch x := e.(type) {
	case pathExpr:
		if x.parts[0] != alias {
			return fmt.Errorf("eventql: unknown identifier %q (the alias is %q)", x.parts[0], alias)
		}
	case notExpr:
		return checkPaths(x.x, alias)
	case uniqueExpr:
		return checkPaths(x.x, alias)
	case binExpr:
		if err := checkPaths(x.l, alias); err != nil {
			return err
		}
		return checkPaths(x.r, alias)
	case objExpr:
		for _, v := range x.vals {
			if err := checkPaths(v, alias); err != nil {
				return err
			}
		}
	}
	return nil
}

// bare reports whether e reads a field outside an aggregate.
func bare(e expr) bool {
	switch x := e.(type) {
	case pathExpr:
		return true
	case notExpr:
		return bare(x.x)
	case binExpr:
		return bare(x.l) || bare(x.r)
	case objExpr:
		for _, v := range x.vals {
			if bare(v) {
				return true
			}
		}
	}
	return false
}

// hasCount reports whether e holds an aggregate (COUNT or UNIQUE).
func hasCount(e expr) bool {
	switch x := e.(type) {
	case countExpr, uniqueExpr:
		return true
	case notExpr:
		return hasCount(x.x)
	case binExpr:
		return hasCount(x.l) || hasCount(x.r)
	case objExpr:
		for _, v := range x.vals {
			if hasCount(v) {
				return true
			}
		}
	}
	return false
}

func (p *parser) expression() (expr, error) { return p.or() }

func (p *parser) or() (expr, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.isKeyword("OR") {
		p.next()
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = binExpr{"OR", l, r}
	}
	return l, nil
}

func (p *parser) and() (expr, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for p.isKeyword("AND") {
		p.next()
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = binExpr{"AND", l, r}
	}
	return l, nil
}

func (p *parser) not() (expr, error) {
	if p.isKeyword("NOT") {
		p.next()
		x, err := p.not()
		if err != nil {
			return nil, err
		}
		return notExpr{x}, nil
	}
	return p.comparison()
}

func (p *parser) comparison() (expr, error) {
	l, err := p.primary()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind == tkPunct {
		switch t.text {
		case "==", "!=", "<", "<=", ">", ">=":
			p.next()
			r, err := p.primary()
			if err != nil {
				return nil, err
			}
			return binExpr{t.text, l, r}, nil
		}
	}
	return l, nil
}

func (p *parser) primary() (expr, error) {
	t := p.next()
	switch t.kind {
	case tkString:
		return litExpr{t.text}, nil
	case tkNumber:
		f, err := strconv.ParseFloat(t.text, 64)
		if err != nil {
			return nil, fmt.Errorf("eventql: malformed number %q at %d", t.text, t.pos)
		}
		return litExpr{f}, nil
	case tkPunct:
		switch t.text {
		case "-":
			n := p.next()
			f, err := strconv.ParseFloat(n.text, 64)
			if n.kind != tkNumber || err != nil {
				return nil, fmt.Errorf("eventql: expected a number after - at %d", t.pos)
			}
			return litExpr{-f}, nil
		case "(":
			x, err := p.expression()
			if err != nil {
				return nil, err
			}
			if !p.punct(")") {
				return nil, fmt.Errorf("eventql: expected ) at %d", p.peek().pos)
			}
			return x, nil
		case "{":
			var o objExpr
			for !p.punct("}") {
				if len(o.keys) > 0 && !p.punct(",") {
					return nil, fmt.Errorf("eventql: expected , or } at %d", p.peek().pos)
				}
				k := p.next()
				if k.kind != tkIdent && k.kind != tkString {
					return nil, fmt.Errorf("eventql: expected a key at %d", k.pos)
				}
				if !p.punct(":") {
					return nil, fmt.Errorf("eventql: expected : at %d", p.peek().pos)
				}
				v, err := p.expression()
				if err != nil {
					return nil, err
				}
				o.keys = append(o.keys, k.text)
				o.vals = append(o.vals, v)
			}
			return o, nil
		}
	case tkIdent:
		switch strings.ToLower(t.text) {
		case "true":
			return litExpr{true}, nil
		case "false":
			return litExpr{false}, nil
		case "null":
			return litExpr{nil}, nil
		}
		if p.punct("(") {
			switch {
			case strings.EqualFold(t.text, "COUNT"):
				if !p.punct(")") {
					return nil, fmt.Errorf("eventql: COUNT takes no arguments (at %d)", t.pos)
				}
				return countExpr{}, nil
			case strings.EqualFold(t.text, "UNIQUE"):
				x, err := p.expression()
				if err != nil {
					return nil, err
				}
				if hasCount(x) {
					return nil, fmt.Errorf("eventql: aggregates do not nest (at %d)", t.pos)
				}
				if !p.punct(")") {
					return nil, fmt.Errorf("eventql: expected ) after UNIQUE's argument at %d", p.peek().pos)
				}
				return uniqueExpr{x}, nil
			}
			return nil, fmt.Errorf("eventql: esdbtest supports no function %s()", t.text)
		}
		parts := []string{t.text}
		for p.punct(".") {
			f := p.next()
			if f.kind != tkIdent {
				return nil, fmt.Errorf("eventql: expected a field name at %d", f.pos)
			}
			parts = append(parts, f.text)
		}
		return pathExpr{parts}, nil
	}
	return nil, fmt.Errorf("eventql: unexpected %q at %d", t.text, t.pos)
}

// run evaluates the query over events and hands each row to emit until it
// returns false.
func (q *query) run(events []storedEvent, emit func(any) bool) error {
	var matched []map[string]any
	for _, e := range events {
		if q.where != nil {
			v, err := eval(q.where, e.fields, nil)
			if err != nil {
				return err
			}
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("eventql: WHERE: %w, got %s", errNotBool, describe(v))
			}
			if !b {
				continue
			}
		}
		matched = append(matched, e.fields)
	}
	if q.orderBy != nil {
		keys := make([]any, len(matched))
		for i, m := range matched {
			v, err := eval(q.orderBy, m, nil)
			if err != nil {
				return err
			}
			keys[i] = v
		}
		idx := make([]int, len(matched))
		for i := range idx {
			idx[i] = i
		}
		var cmpErr error
		sort.SliceStable(idx, func(a, b int) bool {
			c, err := compare(keys[idx[a]], keys[idx[b]])
			if err != nil && cmpErr == nil {
				cmpErr = err
			}
			if q.desc {
				return c > 0
			}
			return c < 0
		})
		if cmpErr != nil {
			return fmt.Errorf("eventql: ORDER BY: %w", cmpErr)
		}
		sorted := make([]map[string]any, len(matched))
		for i, j := range idx {
			sorted[i] = matched[j]
		}
		matched = sorted
	}
	if q.groupBy != nil {
		return q.runGroups(matched, emit)
	}
	matched = matched[min(q.skip, len(matched)):]
	if q.top >= 0 && q.top < len(matched) {
		matched = matched[:q.top]
	}
	if hasCount(q.project) {
		v, err := eval(q.project, nil, matched)
		if err != nil {
			return err
		}
		emit(v)
		return nil
	}
	var seen []any
	for _, m := range matched {
		v, err := eval(q.project, m, nil)
		if err != nil {
			return err
		}
		if q.distinct {
			dup := false
			for _, s := range seen {
				if reflect.DeepEqual(s, v) {
					dup = true
					break
				}
			}
			if dup {
				continue
			}
			seen = append(seen, v)
		}
		if !emit(v) {
			return nil
		}
	}
	return nil
}

// runGroups groups the matched events by the GROUP BY key (groups in the
// order of their first event), keeps those whose HAVING holds, applies
// SKIP and TOP to the groups and emits one projected row per group.
func (q *query) runGroups(matched []map[string]any, emit func(any) bool) error {
	var keys []string
	groups := map[string][]map[string]any{}
	for _, m := range matched {
		v, err := eval(q.groupBy, m, nil)
		if err != nil {
			return err
		}
		k := describe(v)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], m)
	}
	var rows [][]map[string]any
	for _, k := range keys {
		g := groups[k]
		if q.having != nil {
			v, err := eval(q.having, nil, g)
			if err != nil {
				return err
			}
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("eventql: HAVING: %w, got %s", errNotBool, describe(v))
			}
			if !b {
				continue
			}
		}
		rows = append(rows, g)
	}
	rows = rows[min(q.skip, len(rows)):]
	if q.top >= 0 && q.top < len(rows) {
		rows = rows[:q.top]
	}
	var seen []any
	for _, g := range rows {
		v, err := eval(q.project, nil, g)
		if err != nil {
			return err
		}
		if q.distinct {
			if slices.ContainsFunc(seen, func(s any) bool { return reflect.DeepEqual(s, v) }) {
				continue
			}
			seen = append(seen, v)
		}
		if !emit(v) {
			return nil
		}
	}
	return nil
}

func describe(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	return string(b)
}

// eval evaluates e for one event (fields) or, for an aggregate, over a
// group of events: COUNT() is its size, UNIQUE(x) the value x has for
// every event of the group (null for none; an error if they differ).
func eval(e expr, fields map[string]any, group []map[string]any) (any, error) {
	switch x := e.(type) {
	case litExpr:
		return x.v, nil
	case countExpr:
		return float64(len(group)), nil
	case uniqueExpr:
		var out any
		for i, m := range group {
			v, err := eval(x.x, m, nil)
			if err != nil {
				return nil, err
			}
			if i > 0 && !reflect.DeepEqual(v, out) {
				return nil, fmt.Errorf("eventql: UNIQUE: the group holds %s and %s", describe(out), describe(v))
			}
			out = v
		}
		return out, nil
	case pathExpr:
		if fields == nil {
			return nil, fmt.Errorf("eventql: %s is not allowed next to an aggregate (COUNT, UNIQUE)", strings.Join(x.parts, "."))
		}
		var v any = fields
		for _, part := range x.parts[1:] {
			m, ok := v.(map[string]any)
			if !ok {
				return nil, nil
			}
			v = m[part]
		}
		return v, nil
	case notExpr:
		v, err := eval(x.x, fields, group)
		if err != nil {
			return nil, err
		}
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("eventql: NOT: %w, got %s", errNotBool, describe(v))
		}
		return !b, nil
	case objExpr:
		out := make(map[string]any, len(x.keys))
		for i, k := range x.keys {
			v, err := eval(x.vals[i], fields, group)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	case binExpr:
		l, err := eval(x.l, fields, group)
		if err != nil {
			return nil, err
		}
		r, err := eval(x.r, fields, group)
		if err != nil {
			return nil, err
		}
		switch x.op {
		case "AND", "OR":
			lb, ok1 := l.(bool)
			rb, ok2 := r.(bool)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("eventql: %s: %w", x.op, errNotBool)
			}
			if x.op == "AND" {
				return lb && rb, nil
			}
			return lb || rb, nil
		case "==":
			return equal(l, r), nil
		case "!=":
			return !equal(l, r), nil
		}
		if l == nil || r == nil {
			return false, nil // an ordering with null never holds
		}
		c, err := compare(l, r)
		if err != nil {
			return nil, fmt.Errorf("eventql: %s: %w", x.op, err)
		}
		switch x.op {
		case "<":
			return c < 0, nil
		case "<=":
			return c <= 0, nil
		case ">":
			return c > 0, nil
		case ">=":
			return c >= 0, nil
		}
	}
	return nil, fmt.Errorf("eventql: cannot evaluate %T", e)
}

func asNumber(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case string:
		if x != "" && strings.TrimLeft(x, "0123456789") == "" {
			f, err := strconv.ParseFloat(x, 64)
			return f, err == nil
		}
	}
	return 0, false
}

func isNumber(v any) bool {
	switch v.(type) {
	case float64, json.Number:
		return true
	}
	return false
}

func equal(l, r any) bool {
	if isNumber(l) || isNumber(r) {
		a, ok1 := asNumber(l)
		b, ok2 := asNumber(r)
		return ok1 && ok2 && a == b
	}
	return reflect.DeepEqual(l, r)
}

func compare(l, r any) (int, error) {
	ls, lok := l.(string)
	rs, rok := r.(string)
	if lok && rok {
		a, ok1 := asNumber(ls)
		b, ok2 := asNumber(rs)
		if ok1 && ok2 {
			return cmpFloat(a, b), nil
		}
		return strings.Compare(ls, rs), nil
	}
	a, ok1 := asNumber(l)
	b, ok2 := asNumber(r)
	if ok1 && ok2 {
		return cmpFloat(a, b), nil
	}
	switch {
	case l == nil && r == nil:
		return 0, nil
	case l == nil:
		return -1, nil // null sorts first
	case r == nil:
		return 1, nil
	}
	return 0, fmt.Errorf("cannot compare %s with %s", describe(l), describe(r))
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	case math.IsNaN(a) || math.IsNaN(b):
		return 0
	}
	return 0
}
