package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Keys of the checkpoint topic's records. Each committed transaction
// writes the events cursor (and the outbox cursor when the outbox table is
// drained); a new leader writes a session record first.
const (
	keyEvents  = "events"
	keyOutbox  = "outbox"
	keySession = "session"
)

// Checkpoint is where a relay resumes: the cursors just after the last
// event and outbox message it published. Its records live in the Kafka
// transactions that published them, so it is never ahead of, nor behind,
// what read_committed consumers see.
type Checkpoint struct {
	Events stores.Cursor
	Outbox stores.Cursor
}

// ensureTopics checks that the configured topics exist and creates the
// checkpoint topic (one partition, compacted) if it does not.
func (r *Relay) ensureTopics(ctx context.Context, adm *kadm.Client) error {
	want := r.destinations()
	md, err := adm.Metadata(ctx, want...)
	if err != nil {
		return fmt.Errorf("outbox: metadata: %w", err)
	}
	var missing []error
	for _, t := range want {
		d, ok := md.Topics[t]
		if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, fmt.Errorf("%w: %s (create it: orchestrix topics create)", ErrTopicMissing, t))
		} else if d.Err != nil {
			return fmt.Errorf("outbox: metadata of %s: %w", t, d.Err)
		}
	}
	if err := errors.Join(missing...); err != nil {
		return err
	}
	compact := "compact"
	resp, err := adm.CreateTopic(ctx, 1, r.cfg.checkpointRF, map[string]*string{"cleanup.policy": &compact}, r.cfg.checkpointTopic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("outbox: create checkpoint topic %s: %w", r.cfg.checkpointTopic, err)
	}
	return nil
}

// recoverCheckpoint returns the last committed checkpoint. It must run
// after the producer's initialisation fenced every earlier instance (whose
// open transaction the broker then aborted). It commits a session record
// first: every record of the checkpoint partition below that record's
// offset is then decided (committed or aborted), and the last committed
// checkpoint is the last one a read_committed consumer finds below it.
func (r *Relay) recoverCheckpoint(ctx context.Context, cl *kgo.Client, adm *kadm.Client) (Checkpoint, error) {
	if err := cl.BeginTransaction(); err != nil {
		return Checkpoint{}, fmt.Errorf("outbox: begin session transaction: %w", err)
	}
	mark := &kgo.Record{Topic: r.cfg.checkpointTopic, Key: []byte(keySession),
		Value:   []byte(r.cfg.instance + " " + time.Now().UTC().Format(time.RFC3339Nano)),
		Headers: []kgo.RecordHeader{{Key: TransactionalIDHeader, Value: []byte(r.cfg.txnID)}}}
	res := cl.ProduceSync(ctx, mark)
	if err := res.FirstErr(); err != nil {
		r.abort(cl)
		return Checkpoint{}, fmt.Errorf("outbox: write session record: %w", err)
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return Checkpoint{}, fmt.Errorf("outbox: commit session record: %w", err)
	}
	end := res[0].Record.Offset

	starts, err := adm.ListStartOffsets(ctx, r.cfg.checkpointTopic)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("outbox: start offset of %s: %w", r.cfg.checkpointTopic, err)
	}
	logStart := int64(0)
	if o, ok := starts.Lookup(r.cfg.checkpointTopic, 0); ok && o.Err == nil {
		logStart = o.Offset
	}
	// Look back in growing windows: the last checkpoint is normally a few
	// offsets below the session record (record + commit marker per
	// transaction, plus aborted ones after a crash).
	for window := int64(64); ; window *= 8 {
		from := max(logStart, end-window)
		cp, found, err := r.scanCheckpoint(ctx, from, end)
		if err != nil {
			return Checkpoint{}, err
		}
		if found || from == logStart {
			return cp, nil
		}
	}
}

// checkSession warns when a session record in the checkpoint topic names
// another transactional ID than this relay's: two relays of one events
// topic with different IDs campaign for different leader locks, so both
// lead and both publish every event (one transactional ID per events
// topic). After a deliberate change of ID it warns until the old session
// records are out of the checkpoint scan's window.
func (r *Relay) checkSession(rec *kgo.Record) {
	for _, h := range rec.Headers {
		if h.Key == TransactionalIDHeader && string(h.Value) != r.cfg.txnID {
			r.log.Warn("another relay with a different transactional ID publishes this events topic: the two hold different leader locks and both publish every event; give every relay of a topic the same transactional ID",
				"checkpoint_topic", r.cfg.checkpointTopic, "other_transactional_id", string(h.Value),
				"transactional_id", r.cfg.txnID, "other_session", string(rec.Value))
			return
		}
	}
}

// scanCheckpoint reads the checkpoint partition from offset from up to the
// session record at offset end, read_committed, and returns the last
// cursors found. found reports whether an events cursor was found (and,
// when the outbox table is drained, an outbox cursor).
func (r *Relay) scanCheckpoint(ctx context.Context, from, end int64) (cp Checkpoint, found bool, err error) {
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(r.seeds...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.checkpointTopic: {0: kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200 * time.Millisecond),
		kgo.WithLogger(kslog.New(r.log)),
	}, r.cfg.clientOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return cp, false, fmt.Errorf("outbox: checkpoint reader: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.txnTimeout)
	defer cancel()
	var haveEvents, haveOutbox bool
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return cp, false, fmt.Errorf("outbox: read checkpoint %s [%d, %d]: %w", r.cfg.checkpointTopic, from, end, err)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = errors.Join(ferr, err) })
		if ferr != nil {
			return cp, false, fmt.Errorf("outbox: read checkpoint: %w", ferr)
		}
		done := false
		var perr error
		fs.EachRecord(func(rec *kgo.Record) {
			if done || perr != nil {
				return
			}
			if rec.Offset >= end {
				done = true
				return
			}
			switch string(rec.Key) {
			case keySession:
				r.checkSession(rec)
			case keyEvents:
				c, err := stores.ParseCursor(string(rec.Value))
				if err != nil {
					perr = fmt.Errorf("outbox: checkpoint topic %s offset %d: %w", r.cfg.checkpointTopic, rec.Offset, err)
				}
				cp.Events, haveEvents = c, true
			case keyOutbox:
				c, err := stores.ParseCursor(string(rec.Value))
				if err != nil {
					perr = fmt.Errorf("outbox: checkpoint topic %s offset %d: %w", r.cfg.checkpointTopic, rec.Offset, err)
				}
				cp.Outbox, haveOutbox = c, true
			}
		})
		if perr != nil {
			return cp, false, fmt.Errorf("%w: %w", orchestrix.ErrInvalid, perr)
		}
		if done {
			return cp, haveEvents && (haveOutbox || r.outbox == nil), nil
		}
	}
}
