package consumers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// MissingTopicsError is returned by Run, before anything is consumed, when
// topics the failure policy writes to (retry levels, the dead-letter
// topic) do not exist. Without them the first record that fails would stop
// the group, again after every restart. It matches topics.ErrNotFound.
type MissingTopicsError struct {
	// Group is the consumer group.
	Group string
	// Topics are the missing topics, in the order of FailurePolicy.Topics
	// per consumed topic.
	Topics []string
	// Commands are the CLI commands that create them, one per consumed
	// topic with missing ones.
	Commands []string
}

// Error names the missing topics and the commands that create them.
func (e *MissingTopicsError) Error() string {
	names := make([]string, len(e.Topics))
	for i, t := range e.Topics {
		names[i] = "retry topic " + t
		if strings.HasSuffix(t, ".dlq") {
			names[i] = "dead-letter topic " + t
		}
	}
	return fmt.Sprintf("consumers: group %s: topics the failure policy writes to do not exist: %s (create them: %s)",
		e.Group, strings.Join(names, ", "), strings.Join(e.Commands, "; "))
}

// Is reports whether target is topics.ErrNotFound.
func (e *MissingTopicsError) Is(target error) bool { return target == topics.ErrNotFound }

// topicsSettle is how long checkTopics looks again at topics that seem
// missing: a broker learns of a topic created a moment ago with a delay
// (over 3s on a busy 2-core test machine).
const topicsSettle = 10 * time.Second

// checkTopics checks that every topic the policy writes to exists (see
// MissingTopicsError) and, in an ordered mode, that the retry topics have
// as many partitions as their origin topic. Topics that seem missing are
// looked up again for up to topicsSettle.
func (g *Group) checkTopics(ctx context.Context) error {
	p := g.cfg.policy
	if len(p.RetryDelays) == 0 && !p.DeadLetter {
		return nil
	}
	all := append([]string(nil), g.topics...)
	for _, t := range g.topics {
		all = append(all, p.Topics(t, g.group)...)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	settle := time.Now().Add(topicsSettle)
	for {
		g.stamp()
		err := g.checkTopicsOnce(cctx, all)
		var missing *MissingTopicsError
		if !errors.As(err, &missing) || time.Now().After(settle) {
			return err
		}
		select {
		case <-cctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// checkTopicsOnce is one look at the topics all of checkTopics.
func (g *Group) checkTopicsOnce(ctx context.Context, all []string) error {
	p := g.cfg.policy
	td, err := kadm.NewClient(g.cl).ListTopics(ctx, all...)
	if err != nil {
		return fmt.Errorf("consumers: check the failure policy's topics: %w", err)
	}
	missing := &MissingTopicsError{Group: g.group}
	var errs []error
	for _, t := range g.topics {
		origin, known := td[t]
		known = known && origin.Err == nil
		var absent []string
		for _, name := range p.Topics(t, g.group) {
			d, ok := td[name]
			switch {
			case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
				absent = append(absent, name)
			case d.Err != nil:
				errs = append(errs, fmt.Errorf("topic %s: %w", name, d.Err))
			case p.ordered() && name != DeadLetterTopic(t, g.group) && known && len(d.Partitions) != len(origin.Partitions):
				errs = append(errs, fmt.Errorf("retry topic %s has %d partitions, %s has %d: ordered retries need equal counts", name, len(d.Partitions), t, len(origin.Partitions)))
			}
		}
		if len(absent) == 0 {
			continue
		}
		missing.Topics = append(missing.Topics, absent...)
		cmd := "orchestrix topics create --topics " + t + " --group " + g.group
		if n := len(p.RetryDelays); n > 0 {
			cmd += " --retry-levels " + strconv.Itoa(n)
		}
		if known {
			cmd += " --partitions " + strconv.Itoa(len(origin.Partitions))
		}
		missing.Commands = append(missing.Commands, cmd)
	}
	if len(missing.Topics) > 0 {
		errs = append([]error{missing}, errs...)
	}
	if err := errors.Join(errs...); err != nil {
		if len(errs) == 1 && len(missing.Topics) > 0 {
			return missing
		}
		return fmt.Errorf("consumers: %w", err)
	}
	return nil
}
