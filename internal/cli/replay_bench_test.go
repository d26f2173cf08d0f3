package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/orchestrix/orchestrix/internal/testenv"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// BenchmarkReplay copies 200k records (4 partitions, 100-byte values)
// with `orchestrix replay --execute` and, in the same run, with a raw
// franz-go loop (consume the partitions, produce each poll's records with
// the default idempotent producer, no transactions, no filters) as the
// baseline. Run with -benchtime=1x.
func BenchmarkReplay(b *testing.B) {
	seeds := testenv.Brokers(b)
	src := testenv.Topic(b, seeds, 4, nil)
	const n = 200_000
	cl := testenv.Client(b, seeds, kgo.DefaultProduceTopic(src), kgo.ProducerLinger(5*time.Millisecond))
	value := []byte(strings.Repeat("x", 100))
	recs := make([]*kgo.Record, 0, 10_000)
	for i := range n {
		recs = append(recs, &kgo.Record{Key: []byte{byte(i), byte(i >> 8)}, Value: value, Headers: []kgo.RecordHeader{{Key: "ce_type", Value: []byte("T")}}})
		if len(recs) == cap(recs) {
			if err := cl.ProduceSync(b.Context(), recs...).FirstErr(); err != nil {
				b.Fatal(err)
			}
			recs = recs[:0]
		}
	}
	raw := func() time.Duration {
		dst := testenv.Topic(b, seeds, 4, nil)
		start := time.Now()
		c := testenv.Client(b, seeds, kgo.ConsumeTopics(src), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.DefaultProduceTopic(dst), kgo.ProducerLinger(5*time.Millisecond))
		copied := 0
		for copied < n {
			fs := c.PollRecords(b.Context(), 1000)
			var out []*kgo.Record
			fs.EachRecord(func(r *kgo.Record) {
				out = append(out, &kgo.Record{Key: r.Key, Value: r.Value, Headers: r.Headers, Timestamp: r.Timestamp})
			})
			if err := c.ProduceSync(b.Context(), out...).FirstErr(); err != nil {
				b.Fatal(err)
			}
			copied += len(out)
		}
		return time.Since(start)
	}
	for _, batch := range []string{"1000", "5000"} {
		b.Run("batch="+batch, func(b *testing.B) {
			for b.Loop() {
				benchReplayOnce(b, seeds, src, n, batch, raw)
			}
		})
	}
}

func benchReplayOnce(b *testing.B, seeds []string, src string, n int, batch string, raw func() time.Duration) {
	{
		base := raw()
		dst := testenv.Topic(b, seeds, 4, nil)
		ckpt := testenv.Name("ckpt")
		b.Cleanup(func() { _, _ = kadm.NewClient(testenv.Client(b, seeds)).DeleteTopics(context.Background(), ckpt) })
		var out, errb strings.Builder
		start := time.Now()
		err := runReplay(b.Context(), []string{"--brokers", strings.Join(seeds, ","), "--from", src, "--to", dst, "--execute", "--batch", batch, "--checkpoint-topic", ckpt, "-o", "json"}, &out, &errb)
		elapsed := time.Since(start)
		if err != nil {
			b.Fatalf("%v: %s", err, errb.String())
		}
		var res struct{ Copied int64 }
		if err := json.Unmarshal([]byte(out.String()), &res); err != nil || res.Copied != int64(n) {
			b.Fatalf("%s %v", out.String(), err)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
		b.ReportMetric(float64(n)/base.Seconds(), "raw-records/s")
		b.ReportMetric(base.Seconds()/elapsed.Seconds(), "x-baseline")
	}
}
