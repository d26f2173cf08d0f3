package banking_test

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/examples/banking"
	"github.com/orchestrix/orchestrix/sagas"
)

// The transfer saga's decisions, without Kafka or a database: a start
// sends the debit; the debit's acceptance sends the credit; a credit
// rejected on every try (the destination is not open) sends the refund;
// the refund's acceptance ends the transfer compensated — refunded.
func ExampleNewTransferSaga() {
	d, _ := banking.NewTransferSaga(banking.TransferSagaType("bank"), "bank.commands")
	now := time.Now()
	show := func(dec sagas.Decision) {
		for _, c := range dec.Commands {
			fmt.Printf("  → %s %s %T%+v\n", c.Topic, c.Command.AggregateID, c.Command.Payload, c.Command.Payload)
		}
		var t banking.Transfer
		_ = json.Unmarshal(dec.Instance.State, &t)
		fmt.Printf("%s step %d: %s\n", dec.Instance.Status, dec.Instance.Step, banking.TransferResult(dec.Instance.Status, t))
	}
	var lastCommand string // the command the instance waits for
	reply := func(inst *sagas.Instance, status string) sagas.Decision {
		dec, err := d.Transition(inst, sagas.Input{ID: fmt.Sprint("outcome-", inst.Version), Kind: sagas.KindOutcome,
			Outcome: orchestrix.Outcome{CommandID: lastCommand, Status: status, Code: "not_open"}}, now)
		if err != nil {
			fmt.Println(err)
		}
		if len(dec.Commands) > 0 {
			lastCommand = dec.Commands[0].Command.ID
		}
		return dec
	}
	state, _ := json.Marshal(banking.Transfer{From: "alice", To: "nobody", Amount: 30})
	dec, _ := d.Transition(nil, sagas.Input{SagaID: "t-1", ID: "start:t-1", Kind: sagas.KindStart, State: state}, now)
	lastCommand = dec.Commands[0].Command.ID
	show(dec)
	dec = reply(&dec.Instance, orchestrix.OutcomeAccepted) // debited
	show(dec)
	for range banking.CreditTries {
		dec = reply(&dec.Instance, orchestrix.OutcomeRejected) // the credit: a retry (after a backoff timer), then the refund
		if dec.Instance.Wait == "retry" {
			dec, _ = d.Transition(&dec.Instance, sagas.Input{ID: dec.Timer.Fired.ID(), Kind: sagas.KindTimer, Timer: dec.Timer.Fired}, now.Add(time.Minute))
			lastCommand = dec.Commands[0].Command.ID
		}
	}
	show(dec)
	dec = reply(&dec.Instance, orchestrix.OutcomeAccepted) // refunded
	show(dec)
	// Output:
	//   → bank.commands alice banking.Withdraw{Amount:30}
	// running step 0: running
	//   → bank.commands nobody banking.Deposit{Amount:30}
	// running step 1: running
	//   → bank.commands alice banking.Deposit{Amount:30}
	// compensating step 0: running
	// compensated step 0: refunded
}
