package esdb

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"time"

	"github.com/orchestrix/orchestrix"
)

// line is one NDJSON item: {"type": …, "payload": …} in the v1 API,
// {"type": …, "data": …} in the v2 API (decodeLine moves data into
// Payload).
type line struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
	Data    json.RawMessage `json:"data"`
}

// lineReader reads NDJSON lines of bounded size.
type lineReader struct {
	r   *bufio.Reader
	max int
	n   int // lines read
	buf []byte
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next non-empty line, io.EOF at a clean end, or the
// read error.
func (lr *lineReader) next() ([]byte, error) {
	for {
		lr.buf = lr.buf[:0]
		for {
			chunk, err := lr.r.ReadSlice('\n')
			lr.buf = append(lr.buf, chunk...)
			if len(lr.buf) > lr.max {
				return nil, fmt.Errorf("line %d exceeds %d bytes: %w", lr.n+1, lr.max, ErrMalformedResponse)
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				if err == io.EOF && len(bytes.TrimSpace(lr.buf)) > 0 {
					break // a last line without its newline
				}
				return nil, err
			}
			break
		}
		lr.n++
		if b := bytes.TrimSpace(lr.buf); len(b) > 0 {
			return b, nil
		}
	}
}

// decodeLine parses one line of the API version; a malformed one is
// ErrMalformedResponse.
func decodeLine(b []byte, n int, api API) (line, error) {
	var l line
	if err := json.Unmarshal(b, &l); err != nil {
		return line{}, fmt.Errorf("line %d is not JSON: %w: %w (line %s)", n, ErrMalformedResponse, err, snippet(b))
	}
	if l.Type == "" {
		return line{}, fmt.Errorf("line %d has no type: %w (line %s)", n, ErrMalformedResponse, snippet(b))
	}
	if api == APIv2 {
		l.Payload, l.Data = l.Data, nil
	}
	return l, nil
}

// streamError turns an error line into a *StreamError.
func streamError(name string, l line) error {
	var p struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(l.Payload, &p); err != nil || p.Error == nil {
		return fmt.Errorf("esdb: %s: error line without a message: %w", name, ErrMalformedResponse)
	}
	return &StreamError{Endpoint: name, Message: *p.Error}
}

// stream sends body (built for the API version) to a streaming endpoint
// and hands every line but heartbeats to handle, until handle returns
// false, the stream ends (nil) or fails; see lines.
func (c *Client) stream(ctx context.Context, name string, body func(API) any, onLine func(), handle func(line, API) (bool, error)) error {
	resp, api, err := c.do(ctx, name, body, true)
	if err != nil {
		return err
	}
	return c.lines(ctx, api, name, resp, onLine, func(l line) (bool, error) { return handle(l, api) })
}

// lines reads a streaming answer and hands every line but heartbeats to
// handle, until handle returns false, the stream ends (nil) or fails.
// Error lines become *StreamError (or, with a code, *APIError). onLine is
// called for every line, heartbeats included; a finite stream (onLine
// nil) of the v2 API must end with its end item, else the stream broke
// off (a transport failure). When handle stops a finite stream early, the
// rest of a short answer is drained so the connection can be reused.
func (c *Client) lines(ctx context.Context, api API, name string, resp *http.Response, onLine func(), handle func(line) (bool, error)) error {
	finite := onLine == nil
	stoppedEarly := false
	defer func() {
		if finite && stoppedEarly {
			drain(resp.Body)
			return
		}
		_ = resp.Body.Close()
	}()
	lr := newLineReader(resp.Body, c.maxLine)
	for {
		b, err := lr.next()
		if err == io.EOF {
			if api == APIv2 && finite {
				return fmt.Errorf("esdb: %s: the answer ended before its end item: %w: %w", name, errTransport, io.ErrUnexpectedEOF)
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, ErrMalformedResponse) {
				return fmt.Errorf("esdb: %s: %w", name, err)
			}
			return c.readErr(ctx, name, err)
		}
		if onLine != nil {
			onLine()
		}
		l, err := decodeLine(b, lr.n, api)
		if err != nil {
			return fmt.Errorf("esdb: %s: %w", name, err)
		}
		switch l.Type {
		case "heartbeat":
			continue
		case "error":
			return envelopeError(name, api, l.Payload)
		case "end":
			if api == APIv2 {
				if finite {
					stoppedEarly = true // drain what may follow
				}
				return nil
			}
		}
		more, err := handle(l)
		if err != nil {
			return err
		}
		if !more {
			stoppedEarly = true
			return nil
		}
	}
}

func unexpected(name string, l line) error {
	return fmt.Errorf("esdb: %s: unexpected line type %q: %w", name, l.Type, ErrMalformedResponse)
}

// ReadEvents yields the subject's events (and, when recursive, those of
// the subjects below it) in the requested order, each checked against its
// hash and the chain. Invalid arguments are yielded as an error wrapping
// orchestrix.ErrInvalid before anything is sent. An error line after the
// 200 is yielded as a *StreamError; the iteration ends after any error.
func (c *Client) ReadEvents(ctx context.Context, subject string, opts ReadOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := ValidateSubject(subject); err != nil {
			yield(Event{}, fmt.Errorf("esdb: read-events: %w", err))
			return
		}
		o, err := opts.wire()
		if err != nil {
			yield(Event{}, fmt.Errorf("esdb: read-events: %w", err))
			return
		}
		var ch chain
		stopped := false
		body := map[string]any{"subject": subject, "options": o}
		err = c.stream(ctx, "read-events", func(API) any { return body }, nil, func(l line, _ API) (bool, error) {
			if l.Type != "event" {
				return false, unexpected("read-events", l)
			}
			e, id, err := parseEvent(l.Payload)
			if err != nil {
				return false, fmt.Errorf("esdb: read-events: %w", err)
			}
			if err := ch.check(e, id); err != nil {
				return false, fmt.Errorf("esdb: read-events: %w", err)
			}
			if !yield(e, nil) {
				stopped = true
				return false, nil
			}
			return true, nil
		})
		if err != nil && !stopped {
			yield(Event{}, err)
		}
	}
}

// ObserveEvents yields the subject's events (recursively if asked) from
// the lower bound on, then every new one as it is written, until ctx ends
// or the loop stops. Heartbeats are consumed silently.
//
// When the connection drops, stalls (no line for StallTimeout), ends, or
// the server reports a transient error (an error line, 429, 502–504), it
// reconnects with exponential backoff from the last event it yielded
// (lowerBound exclusive on its ID), so no event is lost and none is
// yielded twice: an event at or below the last yielded ID is skipped. Each
// such error goes to OnReconnect. Errors that retrying cannot fix (invalid
// arguments, 4xx, a malformed line, a broken hash chain, MaxAttempts
// exhausted) are yielded and end the iteration; so is the context's error.
func (c *Client) ObserveEvents(ctx context.Context, subject string, opts ObserveOptions) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := ValidateSubject(subject); err != nil {
			yield(Event{}, fmt.Errorf("esdb: observe-events: %w", err))
			return
		}
		o := opts.withDefaults()
		if o.LowerBound != nil && o.FromLatestEvent != nil {
			yield(Event{}, fmt.Errorf("esdb: observe-events: lowerBound and fromLatestEvent exclude each other: %w", orchestrix.ErrInvalid))
			return
		}
		if _, err := o.LowerBound.wire("lowerBound"); err != nil {
			yield(Event{}, fmt.Errorf("esdb: observe-events: %w", err))
			return
		}
		if _, err := o.FromLatestEvent.wire(WaitForEvent, ReadEverything); err != nil {
			yield(Event{}, fmt.Errorf("esdb: observe-events: %w", err))
			return
		}
		ob := &observation{c: c, subject: subject, o: o, yield: yield}
		ob.run(ctx)
	}
}

type observation struct {
	c       *Client
	subject string
	o       ObserveOptions
	yield   func(Event, error) bool
	ch      chain
	last    uint64
	hasLast bool
	stopped bool
}

func (ob *observation) run(ctx context.Context) {
	backoff := ob.o.MinBackoff
	attempts := 0
	for {
		progressed, err := ob.once(ctx)
		if ob.stopped {
			return
		}
		if ctx.Err() != nil {
			ob.yield(Event{}, fmt.Errorf("esdb: observe-events: %w", context.Cause(ctx)))
			return
		}
		if err == nil {
			err = fmt.Errorf("esdb: observe-events: %w", errStreamEnded)
		}
		if !IsRetryable(err) {
			ob.yield(Event{}, err)
			return
		}
		if progressed {
			attempts, backoff = 0, ob.o.MinBackoff
		}
		attempts++
		if ob.o.MaxAttempts > 0 && attempts >= ob.o.MaxAttempts {
			ob.yield(Event{}, fmt.Errorf("esdb: observe-events: giving up after %d failed attempts: %w", attempts, err))
			return
		}
		if ob.o.OnReconnect != nil {
			ob.o.OnReconnect(err, attempts)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			ob.yield(Event{}, fmt.Errorf("esdb: observe-events: %w", context.Cause(ctx)))
			return
		case <-t.C:
		}
		backoff = min(2*backoff, ob.o.MaxBackoff)
	}
}

// once runs one connection; progressed reports whether it received any
// line.
func (ob *observation) once(parent context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	watchdog := time.AfterFunc(ob.o.StallTimeout, func() { cancel(ErrStalled) })
	defer watchdog.Stop()

	opts := map[string]any{"recursive": ob.o.Recursive}
	switch {
	case ob.hasLast:
		opts["lowerBound"] = map[string]string{"id": fmt.Sprint(ob.last), "type": string(Exclusive)}
	case ob.o.LowerBound != nil:
		opts["lowerBound"], _ = ob.o.LowerBound.wire("lowerBound")
	case ob.o.FromLatestEvent != nil:
		opts["fromLatestEvent"], _ = ob.o.FromLatestEvent.wire(WaitForEvent, ReadEverything)
	}
	onLine := func() {
		progressed = true
		watchdog.Reset(ob.o.StallTimeout)
	}
	body := map[string]any{"subject": ob.subject, "options": opts}
	err = ob.c.stream(ctx, "observe-events", func(API) any { return body }, onLine, func(l line, _ API) (bool, error) {
		if l.Type != "event" {
			return false, unexpected("observe-events", l)
		}
		e, id, err := parseEvent(l.Payload)
		if err != nil {
			return false, fmt.Errorf("esdb: observe-events: %w", err)
		}
		if ob.hasLast && id <= ob.last {
			return true, nil // already yielded before a reconnect
		}
		if err := ob.ch.check(e, id); err != nil {
			return false, fmt.Errorf("esdb: observe-events: %w", err)
		}
		ob.last, ob.hasLast = id, true
		if !ob.yield(e, nil) {
			ob.stopped = true
			return false, nil
		}
		return true, nil
	})
	if parent.Err() == nil && errors.Is(context.Cause(ctx), ErrStalled) {
		return progressed, fmt.Errorf("esdb: observe-events: nothing for %s: %w", ob.o.StallTimeout, ErrStalled)
	}
	return progressed, err
}

// RunEventQLQuery runs an EventQL query and yields its rows as JSON. A
// query the server cannot parse fails with a 400 *ServerError; an error
// while it runs arrives as a *StreamError.
func (c *Client) RunEventQLQuery(ctx context.Context, query string) iter.Seq2[json.RawMessage, error] {
	return func(yield func(json.RawMessage, error) bool) {
		if query == "" {
			yield(nil, fmt.Errorf("esdb: run-eventql-query: query is empty: %w", orchestrix.ErrInvalid))
			return
		}
		stopped := false
		body := map[string]string{"query": query}
		err := c.stream(ctx, "run-eventql-query", func(API) any { return body }, nil, func(l line, api API) (bool, error) {
			if l.Type != "row" {
				return false, unexpected("run-eventql-query", l)
			}
			row := l.Payload
			if api == APIv2 {
				var r struct {
					Value json.RawMessage `json:"value"`
				}
				if err := json.Unmarshal(row, &r); err != nil || r.Value == nil {
					return false, fmt.Errorf("esdb: run-eventql-query: row without a value: %w", ErrMalformedResponse)
				}
				row = r.Value
			}
			if !yield(append(json.RawMessage(nil), row...), nil) {
				stopped = true
				return false, nil
			}
			return true, nil
		})
		if err != nil && !stopped {
			yield(nil, err)
		}
	}
}

// ReadSubjects yields the subjects at and below baseSubject that hold
// events, with their ancestors (e.g. "/", "/books", "/books/42").
func (c *Client) ReadSubjects(ctx context.Context, baseSubject string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if err := ValidateSubject(baseSubject); err != nil {
			yield("", fmt.Errorf("esdb: read-subjects: %w", err))
			return
		}
		stopped := false
		body := func(api API) any {
			if api == APIv2 {
				return map[string]any{"subject": baseSubject, "options": map[string]bool{"recursive": true}}
			}
			return map[string]string{"baseSubject": baseSubject}
		}
		err := c.stream(ctx, "read-subjects", body, nil, func(l line, _ API) (bool, error) {
			if l.Type != "subject" {
				return false, unexpected("read-subjects", l)
			}
			var p struct {
				Subject *string `json:"subject"`
			}
			if err := json.Unmarshal(l.Payload, &p); err != nil || p.Subject == nil {
				return false, fmt.Errorf("esdb: read-subjects: subject line without a subject: %w", ErrMalformedResponse)
			}
			if !yield(*p.Subject, nil) {
				stopped = true
				return false, nil
			}
			return true, nil
		})
		if err != nil && !stopped {
			yield("", err)
		}
	}
}

// ReadEventTypes yields every event type that has events or a registered
// schema.
func (c *Client) ReadEventTypes(ctx context.Context) iter.Seq2[EventType, error] {
	return func(yield func(EventType, error) bool) {
		stopped := false
		err := c.stream(ctx, "read-event-types", func(API) any { return struct{}{} }, nil, func(l line, api API) (bool, error) {
			if l.Type != "eventType" {
				return false, unexpected("read-event-types", l)
			}
			var w wireEventType
			if err := json.Unmarshal(l.Payload, &w); err != nil {
				return false, fmt.Errorf("esdb: read-event-types: %w: %w", ErrMalformedResponse, err)
			}
			et, err := w.parse(api)
			if err != nil {
				return false, fmt.Errorf("esdb: read-event-types: %w", err)
			}
			if !yield(et, nil) {
				stopped = true
				return false, nil
			}
			return true, nil
		})
		if err != nil && !stopped {
			yield(EventType{}, err)
		}
	}
}
