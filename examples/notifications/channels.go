package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Notification is one message to one user on one channel. Key is its
// idempotency key: the same notification sent again (a retry after a lost
// acknowledgement, a redelivery after a crash, a redrive) carries the same
// key, and receivers keep the first.
type Notification struct {
	Key    string
	UserID string
	To     string // an address the channel understands
	Text   string
}

// Channel delivers notifications. Send returns nil once the receiver
// acknowledged the notification.
type Channel interface {
	Name() string
	Send(ctx context.Context, n Notification) error
}

// errInvalidAddress is a failure no retry can fix: the handler marks it
// permanent, and the record goes straight to the dead-letter topic.
var errInvalidAddress = errors.New("invalid address")

// receipts counts what a receiver got, by idempotency key.
type receipts struct {
	mu    sync.Mutex
	count map[string]int
}

func newReceipts() *receipts { return &receipts{count: map[string]int{}} }

func (r *receipts) add(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count[key]++
}

// snapshot returns the keys received and how often.
func (r *receipts) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.count))
	for k, v := range r.count {
		out[k] = v
	}
	return out
}

// smtpServer is a local SMTP server (emersion/go-smtp) that records each
// message by its Message-ID.
type smtpServer struct {
	srv  *smtp.Server
	addr string
	got  *receipts
}

func startSMTP() (*smtpServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("smtp server: %w", err)
	}
	s := &smtpServer{addr: l.Addr().String(), got: newReceipts()}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &smtpSession{got: s.got}, nil }))
	s.srv.Domain = "localhost"
	s.srv.ReadTimeout, s.srv.WriteTimeout = 10*time.Second, 10*time.Second
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *smtpServer) Close() error { return s.srv.Close() }

type smtpSession struct{ got *receipts }

func (s *smtpSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *smtpSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *smtpSession) Reset()                               {}
func (s *smtpSession) Logout() error                        { return nil }
func (s *smtpSession) Data(r io.Reader) error {
	m, err := mail.ReadMessage(r)
	if err != nil {
		return err
	}
	id := strings.Trim(m.Header.Get("Message-Id"), "<>")
	if id == "" {
		return &smtp.SMTPError{Code: 554, Message: "no Message-ID"}
	}
	s.got.add(strings.TrimSuffix(id, "@notifications.example"))
	return nil
}

// emailChannel sends over SMTP; the idempotency key is the Message-ID.
type emailChannel struct{ addr string }

func (emailChannel) Name() string { return "email" }

func (c emailChannel) Send(ctx context.Context, n Notification) error {
	if _, err := mail.ParseAddress(n.To); err != nil {
		return fmt.Errorf("email to %q: %w: %w", n.To, errInvalidAddress, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("email: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	cl := smtp.NewClient(conn)
	defer cl.Close()
	var msg bytes.Buffer
	fmt.Fprintf(&msg, "From: welcome@notifications.example\r\nTo: %s\r\nSubject: Welcome\r\nMessage-ID: <%s@notifications.example>\r\n\r\n%s\r\n", n.To, n.Key, n.Text)
	if err := cl.SendMail("welcome@notifications.example", []string{n.To}, &msg); err != nil {
		return fmt.Errorf("email: %w", err)
	}
	return cl.Quit()
}

// webhookServer is a local HTTP receiver that records each call by its
// Idempotency-Key header.
type webhookServer struct {
	srv *http.Server
	url string
	got *receipts
}

func startWebhook() (*webhookServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook server: %w", err)
	}
	s := &webhookServer{url: "http://" + l.Addr().String() + "/hooks/user-registered", got: newReceipts()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hooks/user-registered", func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		if key == "" {
			http.Error(w, "missing Idempotency-Key", http.StatusBadRequest)
			return
		}
		s.got.add(key)
		w.WriteHeader(http.StatusNoContent)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *webhookServer) Close() error { return s.srv.Close() }

// webhookChannel POSTs JSON with an Idempotency-Key header.
type webhookChannel struct {
	url    string
	client *http.Client
}

func (webhookChannel) Name() string { return "webhook" }

func (c webhookChannel) Send(ctx context.Context, n Notification) error {
	body := fmt.Sprintf(`{"user":%q,"text":%q}`, n.UserID, n.Text)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", n.Key)
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s", resp.Status)
	}
	return nil
}

// recordingChannel stands in for an SMS or push provider: it records
// what it was given, by idempotency key.
type recordingChannel struct {
	name string
	got  *receipts
}

func (c recordingChannel) Name() string { return c.name }

func (c recordingChannel) Send(ctx context.Context, n Notification) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.got.add(n.Key)
	return nil
}

// flaky fails a share of calls before they reach the channel, from a
// seeded source so that a run can be replayed, and all calls while down.
type flaky struct {
	Channel
	mu   sync.Mutex
	rng  *rand.Rand
	rate float64
	// lostAck is the share of calls that reach the receiver but whose
	// acknowledgement is lost: the sender sees a failure and sends again,
	// and the receiver gets the notification twice (same key).
	lostAck float64
	down    bool
}

func newFlaky(ch Channel, rate float64, seed uint64) *flaky {
	return &flaky{Channel: ch, rng: rand.New(rand.NewPCG(seed, 7)), rate: rate}
}

// errInjected is the failure flaky injects.
var errInjected = errors.New("injected failure (the provider is unavailable)")

func (f *flaky) Send(ctx context.Context, n Notification) error {
	f.mu.Lock()
	fail := f.down || f.rng.Float64() < f.rate
	lose := f.rng.Float64() < f.lostAck
	f.mu.Unlock()
	if fail {
		return fmt.Errorf("%s: %w", f.Name(), errInjected)
	}
	if err := f.Channel.Send(ctx, n); err != nil {
		return err
	}
	if lose {
		return fmt.Errorf("%s: %w", f.Name(), errLostAck)
	}
	return nil
}

// errLostAck is a failure after the receiver got the notification.
var errLostAck = errors.New("injected failure (sent, but the acknowledgement was lost)")

// recover ends an outage and stops injecting failures.
func (f *flaky) recover() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down, f.rate, f.lostAck = false, 0, 0
}

// newChannels returns the four channels by name: email over SMTP to
// smtpAddr, webhooks POSTed to webhookURL (each call bounded by timeout),
// and sms and push behind recording fakes, whose receipts it returns.
func newChannels(smtpAddr, webhookURL string, timeout time.Duration) (channels map[string]Channel, sms, push *receipts) {
	sms, push = newReceipts(), newReceipts()
	return map[string]Channel{
		"email":   emailChannel{addr: smtpAddr},
		"sms":     recordingChannel{name: "sms", got: sms},
		"push":    recordingChannel{name: "push", got: push},
		"webhook": webhookChannel{url: webhookURL, client: &http.Client{Timeout: timeout}},
	}, sms, push
}
