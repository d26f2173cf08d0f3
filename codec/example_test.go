package codec_test

import (
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/codec"
)

func Example() {
	type Deposited struct {
		Amount int64 `json:"amount"`
	}
	reg := codec.NewRegistry()
	if err := codec.RegisterJSON[Deposited](reg, "banking.Deposited"); err != nil {
		fmt.Println(err)
		return
	}

	// Producer side: payload -> event -> Kafka record.
	e := orchestrix.Event{
		Metadata: orchestrix.Metadata{ID: "e-1", Source: "/banking", Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
		StreamID: "acc-1", Version: 1,
		Payload: Deposited{Amount: 10},
	}
	if err := reg.EncodeEvent(&e); err != nil {
		fmt.Println(err)
		return
	}
	rec, err := codec.EventToRecord("banking.events", e)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, h := range rec.Headers {
		fmt.Printf("%s: %s\n", h.Key, h.Value)
	}

	// Consumer side: Kafka record -> event -> payload.
	got, err := codec.RecordToEvent(rec)
	if err == nil {
		err = reg.DecodeEvent(&got)
	}
	fmt.Printf("key %s, payload %+v, err %v\n", rec.Key, got.Payload, err)
	// Output:
	// ce_specversion: 1.0
	// ce_id: e-1
	// ce_source: /banking
	// ce_type: banking.Deposited
	// ce_time: 2025-01-02T03:04:05Z
	// content-type: application/json
	// ce_aggregateid: acc-1
	// ce_aggregateversion: 1
	// key acc-1, payload {Amount:10}, err <nil>
}
