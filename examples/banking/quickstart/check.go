package quickstart

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/producers"
	"github.com/twmb/franz-go/pkg/kadm"
)

// plannedCommand is one command with the outcome a model of the accounts
// predicts (per-account order is kept by the key). It is small: a million
// of them are planned before the first is sent.
type plannedCommand struct {
	account int32
	kind    uint8 // planOpen, planDeposit, planWithdraw
	accept  bool
	amount  int64
}

const (
	planOpen uint8 = iota
	planDeposit
	planWithdraw
)

// payload returns the command's payload.
func (p plannedCommand) payload(owner string) any {
	switch p.kind {
	case planOpen:
		return banking.OpenAccount{Owner: owner}
	case planDeposit:
		return banking.Deposit{Amount: p.amount}
	}
	return banking.Withdraw{Amount: p.amount}
}

// kindName names the command in reports.
func (p plannedCommand) kindName() string {
	return [...]string{"OpenAccount", "Deposit", "Withdraw"}[p.kind]
}

// plan returns the commands (every account opened first, then random
// deposits and withdrawals, some above the balance) and the balance the
// model expects for each account (by index). The same counts give the
// same plan.
func plan(c Config) ([]plannedCommand, []int64) {
	rng := rand.New(rand.NewPCG(42, uint64(c.Commands)))
	balances := make([]int64, c.Accounts)
	plan := make([]plannedCommand, 0, c.Commands)
	for i := range c.Accounts {
		plan = append(plan, plannedCommand{account: int32(i), kind: planOpen, accept: true})
	}
	for len(plan) < c.Commands {
		a := rng.IntN(c.Accounts)
		amount := int64(1 + rng.IntN(100))
		if rng.IntN(2) == 0 {
			plan = append(plan, plannedCommand{account: int32(a), kind: planDeposit, accept: true, amount: amount})
			balances[a] += amount
			continue
		}
		ok := balances[a] >= amount
		if ok {
			balances[a] -= amount
		}
		plan = append(plan, plannedCommand{account: int32(a), kind: planWithdraw, accept: ok, amount: amount})
	}
	return plan, balances
}

// result is what became of one command: compact, as there may be a
// million.
type result struct {
	latency time.Duration
	events  uint32
	status  uint8 // statusOther, statusAccepted...
}

const (
	statusOther uint8 = iota
	statusAccepted
	statusRejected
	statusDuplicate
)

// statusCode returns the code of an outcome status.
func statusCode(s string) uint8 {
	switch s {
	case orchestrix.OutcomeAccepted:
		return statusAccepted
	case orchestrix.OutcomeRejected:
		return statusRejected
	case orchestrix.OutcomeDuplicate:
		return statusDuplicate
	}
	return statusOther
}

// sendAndCheck sends the plan, waits for every outcome and checks the
// outcomes and balances.
func (p *pipeline) sendAndCheck(ctx context.Context, c Config, stdout, stderr io.Writer) error {
	commands, balances := plan(c)
	accounts := make([]string, c.Accounts)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("acct-%s%05d", c.AccountPrefix, i)
	}
	start := time.Now()
	results, err := p.send(ctx, c, commands, accounts, start)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	problems, err := p.check(ctx, commands, results, accounts, balances)
	if err != nil {
		return err
	}
	report(stdout, results, elapsed)
	if len(problems) > 0 {
		for _, p := range problems[:min(len(problems), 10)] {
			fmt.Fprintln(stderr, "inconsistent:", p)
		}
		return fmt.Errorf("%d outcomes or balances %w", len(problems), ErrInconsistent)
	}
	fmt.Fprintf(stdout, "consistent: every balance matches the commands sent\n")
	return nil
}

// send sends every command and returns once every outcome arrived,
// c.Timeout after the last send was acknowledged, or when ctx ends.
// Every command's outcome is registered with the awaiter before the
// command is sent: none can arrive unseen, however many commands are in
// flight.
func (p *pipeline) send(ctx context.Context, c Config, commands []plannedCommand, accounts []string, start time.Time) ([]result, error) {
	results := make([]result, len(commands))
	total := int64(len(commands))
	var done atomic.Int64
	allDone := make(chan struct{})
	stopProgress := func() {}
	if c.Progress != nil {
		stopProgress = c.Progress(total, &done, start)
	}
	defer func() { stopProgress() }()
	var sendErr atomic.Pointer[error]
	for i, pc := range commands {
		if ctx.Err() != nil {
			return nil, stopped(ctx)
		}
		cmd, err := p.sender.Command(accounts[pc.account], pc.payload("owner-"+accounts[pc.account]))
		if err != nil {
			return nil, err
		}
		sentAt := time.Since(start)
		p.awaiter.Notify(cmd.ID, func(o orchestrix.Outcome) {
			results[i] = result{latency: time.Since(start) - sentAt, events: uint32(o.ToVersion - o.FromVersion + 1), status: statusCode(o.Status)}
			if done.Add(1) == total {
				close(allDone)
			}
		})
		p.sender.SendAsync(ctx, cmd, func(err error) {
			if err != nil {
				sendErr.CompareAndSwap(nil, &err)
			}
		})
	}
	if err := p.cl.Flush(ctx); err != nil || sendErr.Load() != nil {
		if ctx.Err() != nil {
			return nil, stopped(ctx)
		}
		if err == nil {
			err = *sendErr.Load()
		}
		return nil, fmt.Errorf("send commands: %w", err)
	}
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	select {
	case <-allDone:
		return results, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w (%d of %d outcomes arrived)", stopped(ctx), done.Load(), total)
	case <-timer.C:
		return nil, fmt.Errorf("%d of %d outcomes missing %s after the last command was sent (%s): %w",
			total-done.Load(), total, c.Timeout, p.lag(ctx, c.Context+"-aggregates"), producers.ErrNoOutcome)
	}
}

// outcomeCount says how many records the outcome topic holds.
func (p *pipeline) outcomeCount(ctx context.Context) string {
	ends, err := kadm.NewClient(p.cl).ListEndOffsets(ctx, p.outcomeTopic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return "outcome records unknown: " + err.Error()
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return fmt.Sprintf("%d records on %s", n, p.outcomeTopic)
}

// lag says where missing outcomes are stuck: the processor group's lag
// on the command topic by partition, or that it has committed every
// command (so the outcomes were produced but not seen).
func (p *pipeline) lag(ctx context.Context, group string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	lags, err := kadm.NewClient(p.cl).Lag(ctx, group)
	if err == nil {
		if l, ok := lags[group]; ok {
			err = l.Error()
		}
	}
	if err != nil {
		return fmt.Sprintf("group %s lag unknown: %v", group, err)
	}
	var behind []string
	for _, m := range lags[group].Lag.Sorted() {
		if m.Lag != 0 {
			behind = append(behind, fmt.Sprintf("%s[%d] %d", m.Topic, m.Partition, m.Lag))
		}
	}
	if len(behind) == 0 {
		return fmt.Sprintf("group %s (%s) has committed every command; %s", group, lags[group].State, p.outcomeCount(ctx))
	}
	return fmt.Sprintf("group %s (%s) lags: %s", group, lags[group].State, strings.Join(behind, ", "))
}

// check compares every outcome with the plan and every balance with the
// model, and returns the differences.
func (p *pipeline) check(ctx context.Context, commands []plannedCommand, results []result, accounts []string, balances []int64) ([]string, error) {
	var problems []string
	for i, r := range results {
		if (r.status == statusRejected) == commands[i].accept {
			pc := commands[i]
			problems = append(problems, fmt.Sprintf("command %d (%s on %s): status %d, the model expected accept=%v", i, pc.kindName(), accounts[pc.account], r.status, pc.accept))
		}
	}
	for i, want := range balances {
		root, err := p.repo.Load(ctx, accounts[i])
		if err != nil {
			return nil, err
		}
		if root.State.Balance != want || !root.State.Opened {
			problems = append(problems, fmt.Sprintf("account %s: balance %d, expected %d", accounts[i], root.State.Balance, want))
		}
	}
	return problems, nil
}

// report writes the counts, throughput and latencies.
func report(w io.Writer, results []result, elapsed time.Duration) {
	var accepted, rejected, duplicates, events int
	latencies := make([]time.Duration, len(results))
	for i, r := range results {
		latencies[i] = r.latency
		switch r.status {
		case statusAccepted:
			accepted++
			events += int(r.events)
		case statusRejected:
			rejected++
		case statusDuplicate:
			duplicates++
		}
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[min(len(latencies)-1, int(p*float64(len(latencies))))] }
	fmt.Fprintf(w, "commands   %d sent, %d accepted, %d rejected (insufficient funds), %d duplicates\n", len(results), accepted, rejected, duplicates)
	fmt.Fprintf(w, "events     %d stored\n", events)
	fmt.Fprintf(w, "throughput %.0f commands/s over %s\n", float64(len(results))/elapsed.Seconds(), elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "latency    command sent → events stored and outcome seen: p50 %s, p99 %s, max %s\n",
		pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), latencies[len(latencies)-1].Round(time.Microsecond))
}
