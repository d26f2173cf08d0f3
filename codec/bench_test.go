package codec_test

import (
	"encoding/json"
	"testing"

	"github.com/orchestrix/orchestrix/codec"
)

const depositSchema = `{"type":"record","name":"Deposited","fields":[
	{"name":"account","type":"string"},{"name":"amount","type":"long"},{"name":"memo","type":"string","default":""}]}`

var benchDeposit = Deposited{Account: "acc-0190f3c2", Amount: 12345, Memo: "salary"}

func BenchmarkEncodeJSONBaseline(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(benchDeposit); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeJSON(b *testing.B) {
	r := newJSONRegistry(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, err := r.Encode(benchDeposit); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeJSON(b *testing.B) {
	r := newJSONRegistry(b)
	typ, ct, ds, data, _ := r.Encode(benchDeposit)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(typ, ct, ds, data); err != nil {
			b.Fatal(err)
		}
	}
}

func avroRegistry(b *testing.B) *codec.Registry {
	b.Helper()
	r := codec.NewRegistry()
	if err := codec.RegisterAvro[Deposited](r, "banking.Deposited", depositSchema); err != nil {
		b.Fatal(err)
	}
	return r
}

func BenchmarkEncodeAvro(b *testing.B) {
	r := avroRegistry(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, err := r.Encode(benchDeposit); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeAvro(b *testing.B) {
	r := avroRegistry(b)
	typ, ct, ds, data, _ := r.Encode(benchDeposit)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decode(typ, ct, ds, data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEventToRecord(b *testing.B) {
	e := sampleEvent()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := codec.EventToRecord("banking.events", e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordToEvent(b *testing.B) {
	rec, err := codec.EventToRecord("banking.events", sampleEvent())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := codec.RecordToEvent(rec); err != nil {
			b.Fatal(err)
		}
	}
}
