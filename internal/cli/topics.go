package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/consumers"
	"github.com/orchestrix/orchestrix/internal/flagenv"
	"github.com/orchestrix/orchestrix/topics"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func runTopics(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "describe") {
		return fmt.Errorf("%w: topics create|describe [flags]", errUsage)
	}
	sub := args[0]
	fs := flags("topics "+sub, stderr)
	brokers := fs.String("brokers", flagenv.Or("KAFKA_BROKERS", ""), "comma-separated seed brokers (env KAFKA_BROKERS)")
	sec := kafkaFlags(fs)
	bc := fs.String("context", "", "bounded context: its commands, events and outcomes topics")
	names := fs.String("topics", "", "comma-separated topic names (instead of or besides --context)")
	partitions := fs.Int("partitions", 8, "partitions (create)")
	replication := fs.Int("replication", 1, "replication factor (create)")
	group := fs.String("group", "", "consumer group: also its dead-letter topic <topic>.<group>.dlq and its retry levels\n"+
		"<topic>.<group>.retry.<n> for each topic it consumes: those of --topics, and <context>.commands with --context")
	levels := fs.Int("retry-levels", 0, "with --group: retry levels of the group's failure policy (len(RetryDelays); 0 for DefaultFailurePolicy)")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *levels < 0 {
		return fmt.Errorf("%w: --retry-levels %d is negative", errUsage, *levels)
	}
	if err := checkFlags(intIn("partitions", *partitions, 1, math.MaxInt32), intIn("replication", *replication, 1, math.MaxInt16),
		intIn("retry-levels", *levels, 0, maxRetryLevel)); err != nil {
		return err
	}
	if *levels > 0 && *group == "" {
		return fmt.Errorf("%w: --retry-levels needs --group", errUsage)
	}
	if *group != "" {
		if err := orchestrix.CheckID("group", *group); err != nil {
			return fmt.Errorf("%w: --group: %w", errUsage, err)
		}
	}
	seeds := flagenv.List(*brokers)
	if len(seeds) == 0 {
		return fmt.Errorf("%w: --brokers or KAFKA_BROKERS is required", errUsage)
	}
	var specs []topics.Spec
	if *bc != "" {
		specs = topics.ForContext(*bc, int32(*partitions), int16(*replication))
	}
	for _, n := range flagenv.List(*names) {
		specs = append(specs, topics.Spec{Name: n, Partitions: int32(*partitions), ReplicationFactor: int16(*replication)})
	}
	if len(specs) == 0 {
		return fmt.Errorf("%w: name topics with --context or --topics", errUsage)
	}
	if *group != "" {
		specs = append(specs, groupSpecs(*bc, flagenv.List(*names), *group, *levels, int32(*partitions), int16(*replication))...)
	}
	kopts, err := sec.options()
	if err != nil {
		return err
	}
	if err := sec.check(ctx, seeds); err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(seeds...))...)
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if sub == "create" {
		created, err := topics.Ensure(ctx, adm, specs...)
		for _, s := range specs {
			state := "exists"
			if slices.Contains(created, s.Name) {
				state = "created"
			}
			fmt.Fprintf(stdout, "%-50s %s\n", s.Name, state)
		}
		return err
	}
	var list []string
	for _, s := range specs {
		list = append(list, s.Name)
	}
	ds, err := topics.Describe(ctx, adm, list...)
	if err != nil {
		return err
	}
	for _, d := range ds {
		var total int64
		for _, o := range d.EndOffsets {
			total += o
		}
		var cfg []string
		for k, v := range d.Configs {
			cfg = append(cfg, k+"="+v)
		}
		slices.Sort(cfg)
		fmt.Fprintf(stdout, "%s\tpartitions=%d replication=%d records(end offsets)=%d %s\n", d.Name, d.Partitions, d.ReplicationFactor, total, strings.Join(cfg, " "))
	}
	return nil
}

// groupSpecs returns the topics a consumer group's failure policy writes
// to, for the topics it consumes (the named ones, and the context's
// commands topic): levels retry levels, then the dead-letter topic. They
// get the partitions of the consumed topics, which ordered retries need.
func groupSpecs(bc string, names []string, group string, levels int, partitions int32, replication int16) []topics.Spec {
	consumed := names
	if bc != "" {
		consumed = append([]string{topics.Commands(bc)}, names...)
	}
	policy := consumers.FailurePolicy{RetryDelays: make([]time.Duration, levels), DeadLetter: true}
	var specs []topics.Spec
	for _, t := range consumed {
		for _, n := range policy.Topics(t, group) {
			specs = append(specs, topics.Spec{Name: n, Partitions: partitions, ReplicationFactor: replication})
		}
	}
	return specs
}
