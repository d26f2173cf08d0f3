package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/internal/exampleapp"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/orchestrix/orchestrix/sagas"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// driveConfig is one drive run.
type driveConfig struct {
	seeds    []string
	kafka    []kgo.Opt
	context  string
	accounts int
	count    int
	rate     int
	missing  float64
	seed     uint64
	timeout  time.Duration
	watch    bool
}

// runDrive sends work to a running service: it opens and funds accounts
// through <context>.commands, starts transfers on the saga's inbox topic,
// and prints what came back on <context>.outcomes.
func runDrive(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("banking drive", flag.ContinueOnError)
	var cf connFlags
	addConnFlags(fs, &cf, flagenv.Or("ORCHESTRIX_CONTEXT", "banking"), "bounded context of the running service (env ORCHESTRIX_CONTEXT)", false)
	var c driveConfig
	fs.IntVar(&c.accounts, "accounts", 10, "accounts acct-000 ... to open (each funded with 1000 when it opens) and transfer between")
	fs.IntVar(&c.count, "count", 100, "transfers to start")
	fs.IntVar(&c.rate, "rate", 50, "transfers started per second")
	fs.Float64Var(&c.missing, "missing", 0.1, "share of the transfers sent to accounts that were never opened (their credit fails: refunded)")
	seed := fs.Uint64("seed", 0, "seed of the transfers (0: from the clock)")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "give up waiting for outcomes this long after the last transfer started")
	fs.BoolVar(&c.watch, "watch", false, "print every outcome as it comes back")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	var errs exampleapp.Problems
	if len(cf.seeds()) == 0 {
		errs.Addf("--brokers (or KAFKA_BROKERS) is required: the brokers of the running service")
	}
	errs.Add(checkContext(cf.context))
	errs.Int("--accounts", c.accounts, 2, 1000)
	errs.Int("--count", c.count, 1, 1_000_000)
	errs.Int("--rate", c.rate, 1, 100_000)
	if !(c.missing >= 0 && c.missing <= 1) {
		errs.Addf("--missing %v: want 0 to 1", c.missing)
	}
	if c.timeout <= 0 {
		errs.Addf("--timeout %s: want a positive duration", c.timeout)
	}
	if len(errs) > 0 {
		return usagef("%s", strings.Join(errs, "; "))
	}
	var err error
	if c.kafka, err = kafkaOpts(); err != nil {
		return err
	}
	c.seeds, c.context, c.seed = cf.seeds(), cf.context, exampleapp.Seed(*seed)
	return drive(ctx, c, stdout)
}

// driven is one transfer the driver started and what came back for it.
type driven struct {
	id      string
	t       banking.Transfer
	sent    time.Time
	result  string // "" until terminal
	took    time.Duration
	retries int
}

func drive(ctx context.Context, c driveConfig, stdout io.Writer) error {
	reg := codec.NewRegistry()
	if err := banking.Register(reg); err != nil {
		return err
	}
	cl, err := producers.NewClient(c.seeds, c.kafka...)
	if err != nil {
		return err
	}
	defer cl.Close()
	typ := banking.TransferSagaType(c.context)
	inbox := sagas.InboxTopic(typ)
	adm := kadm.NewClient(cl)
	if _, err := topics.Describe(ctx, adm, topics.Commands(c.context), topics.Outcomes(c.context), inbox); err != nil {
		return fmt.Errorf("%w (is `banking serve --context %s --init` running against these brokers?)", err, c.context)
	}

	// Outcomes are read from their end as of now: everything this run
	// causes comes after.
	ends, err := adm.ListEndOffsets(ctx, topics.Outcomes(c.context))
	if err != nil {
		return fmt.Errorf("outcomes offsets: %w", err)
	}
	start := map[string]map[int32]kgo.Offset{topics.Outcomes(c.context): {}}
	ends.Each(func(o kadm.ListedOffset) { start[o.Topic][o.Partition] = kgo.NewOffset().At(o.Offset) })
	oc, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.seeds...), kgo.ConsumePartitions(start),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxWait(100 * time.Millisecond)}, c.kafka...)...)
	if err != nil {
		return err
	}
	defer oc.Close()

	var mu sync.Mutex
	byCorrelation := map[string]*driven{}
	opened := map[string]chan orchestrix.Outcome{} // command ID → its outcome
	pending := 0
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			oc.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
				var o orchestrix.Outcome
				if json.Unmarshal(r.Value, &o) != nil {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if ch, ok := opened[o.CommandID]; ok {
					delete(opened, o.CommandID)
					ch <- o
					return
				}
				d := byCorrelation[o.CorrelationID]
				if d == nil || d.result != "" {
					return
				}
				if c.watch {
					fmt.Fprintf(stdout, "  %s  %-10s %-9s %s %s %s\n", d.id, o.AggregateID, o.Status, o.CommandType, o.Code, o.Message)
				}
				d.classify(o)
				if d.result != "" {
					d.took = time.Since(d.sent)
					pending--
				}
			})
		}
	}()

	// Accounts: open each; fund the ones this run opened.
	sender, err := producers.NewSender(cl, reg, topics.Commands(c.context), "/banking-drive")
	if err != nil {
		return err
	}
	send := func(acc string, p any) (orchestrix.Outcome, error) {
		cmd, err := sender.Command(acc, p)
		if err != nil {
			return orchestrix.Outcome{}, err
		}
		ch := make(chan orchestrix.Outcome, 1)
		mu.Lock()
		opened[cmd.ID] = ch
		mu.Unlock()
		if err := sender.Send(ctx, cmd); err != nil {
			return orchestrix.Outcome{}, err
		}
		select {
		case o := <-ch:
			return o, nil
		case <-time.After(c.timeout):
			return orchestrix.Outcome{}, fmt.Errorf("no outcome for %s on %s after %s: is the service running?", cmd.Type, acc, c.timeout)
		case <-ctx.Done():
			return orchestrix.Outcome{}, ctx.Err()
		}
	}
	accounts := make([]string, c.accounts)
	fresh := 0
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%03d", i)
		o, err := send(accounts[i], banking.OpenAccount{Owner: accounts[i]})
		if err != nil {
			return err
		}
		if o.Status == orchestrix.OutcomeAccepted {
			fresh++
			if o, err = send(accounts[i], banking.Deposit{Amount: initialBalance}); err != nil {
				return err
			}
			if o.Status != orchestrix.OutcomeAccepted {
				return fmt.Errorf("deposit to %s: %s %s", accounts[i], o.Status, o.Message)
			}
		}
	}
	fmt.Fprintf(stdout, "accounts: %d (%d opened now with %d each, the others were open)\n", c.accounts, fresh, initialBalance)

	// Transfers: start messages on the saga's inbox topic, as a service
	// that starts a transfer would write them (StartMessage).
	def, err := banking.NewTransferSaga(typ, topics.Commands(c.context))
	if err != nil {
		return err
	}
	starter, err := sagas.NewRuntime(sagas.NewMemoryStore(), reg, []sagas.Saga{def})
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(c.seed, 7))
	run := exampleapp.RunID()
	all := make([]*driven, c.count)
	every := time.Second / time.Duration(c.rate)
	next := time.Now()
	began := time.Now()
	for i := range all {
		from := accounts[rng.IntN(len(accounts))]
		to := accounts[rng.IntN(len(accounts))]
		for to == from {
			to = accounts[rng.IntN(len(accounts))]
		}
		if rng.Float64() < c.missing {
			to = fmt.Sprintf("missing-%02d", rng.IntN(10))
		}
		d := &driven{id: fmt.Sprintf("%s-%05d", run, i), t: banking.Transfer{From: from, To: to, Amount: 1 + rng.Int64N(100)}}
		msg, err := starter.StartMessage(d.id, d.t)
		if err != nil {
			return err
		}
		if wait := time.Until(next); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
		next = next.Add(every)
		mu.Lock()
		byCorrelation[sagas.Correlation(typ, d.id)] = d
		pending++
		d.sent = time.Now()
		mu.Unlock()
		all[i] = d
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: msg.Topic, Key: msg.Key, Value: msg.Value, Headers: msg.Headers}).FirstErr(); err != nil {
			return fmt.Errorf("start transfer %s: %w", d.id, err)
		}
	}
	fmt.Fprintf(stdout, "started %d transfers in %s on %s (ids %s-*)\n", c.count, time.Since(began).Round(time.Millisecond), inbox, run)

	deadline := time.Now().Add(c.timeout)
	for {
		mu.Lock()
		left := pending
		mu.Unlock()
		if left == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	mu.Lock()
	defer mu.Unlock()
	counts := map[string]int{}
	var took []time.Duration
	retries := 0
	for _, d := range all {
		r := d.result
		if r == "" {
			r = "no outcome yet"
		} else {
			took = append(took, d.took)
		}
		counts[r]++
		retries += d.retries
	}
	fmt.Fprintf(stdout, "outcomes: %d completed, %d declined (funds), %d refunded (credit failed; %d credit rejections in all), %d without an outcome after %s\n",
		counts[banking.ResultCompleted], counts[banking.ResultDeclined], counts[banking.ResultRefunded], retries, counts["no outcome yet"], c.timeout)
	if len(took) > 0 {
		slices.Sort(took)
		q := func(p float64) time.Duration {
			return took[min(len(took)-1, int(p*float64(len(took))))].Round(time.Millisecond)
		}
		fmt.Fprintf(stdout, "start → last outcome: p50 %s, p99 %s, max %s\n", q(0.5), q(0.99), took[len(took)-1].Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "look: kcat -b %s -t %s -C -e -f '%%k %%s\\n'\n", c.seeds[0], topics.Outcomes(c.context))
	if n := counts["no outcome yet"]; n > 0 {
		return errors.New(strconv.Itoa(n) + " transfers without a final outcome")
	}
	return nil
}

// classify folds an outcome of one of the transfer's commands into it:
// the debit's rejection declines it, the credit's acceptance completes
// it, the refund's acceptance (a Deposit back to From) ends it refunded.
func (d *driven) classify(o orchestrix.Outcome) {
	ok := o.Status == orchestrix.OutcomeAccepted || o.Status == orchestrix.OutcomeDuplicate
	switch {
	case o.CommandType == banking.TypeWithdraw && !ok:
		d.result = banking.ResultDeclined
	case o.CommandType == banking.TypeDeposit && o.AggregateID == d.t.To && ok:
		d.result = banking.ResultCompleted
	case o.CommandType == banking.TypeDeposit && o.AggregateID == d.t.To:
		d.retries++
	case o.CommandType == banking.TypeDeposit && o.AggregateID == d.t.From && ok:
		d.result = banking.ResultRefunded
	}
}
