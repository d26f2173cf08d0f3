package banking

import (
	"time"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/sagas"
)

// Transfer is the state of the money-transfer saga: move Amount from
// account From to account To. Debited records that the debit was
// accepted (so a compensated transfer tells a refund from a decline).
type Transfer struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Amount  int64  `json:"amount"`
	Debited bool   `json:"debited,omitempty"`
}

// Validate checks the accounts and the amount; the error matches
// orchestrix.ErrRejected and lists every problem.
func (t Transfer) Validate() error {
	var v orchestrix.Validation
	v.Check(t.From != "", "from", "required", "from is required")
	v.Check(t.To != "", "to", "required", "to is required")
	v.Check(t.From != t.To, "to", "distinct", "to must differ from from")
	v.Check(t.Amount > 0, "amount", "min", "amount must be positive")
	v.Check(t.Amount <= 1_000_000_000, "amount", "max", "amount must be at most 1e9")
	return v.Err()
}

// Transfer saga defaults, visible to users of NewTransferSaga.
const (
	// TransferSagaVersion is the version of the definition NewTransferSaga
	// returns.
	TransferSagaVersion = 1
	// CreditTries is how many times the credit is tried (its first try
	// included) before the debit is refunded.
	CreditTries = 3
	// CreditBackoff is the wait before the credit's second try (doubled
	// for each further one).
	CreditBackoff = 100 * time.Millisecond
)

// TransferSagaType returns the saga type of the transfers of a bounded
// context: "<context>.transfer", so its inbox topic is
// "<context>.transfer.saga-inbox".
func TransferSagaType(context string) string { return context + ".transfer" }

// NewTransferSaga returns the money-transfer saga of type typ, whose
// commands go to the accounts' command topic commandsTopic:
//
//  1. debit: Withdraw Amount from From. A rejection (insufficient funds,
//     account not open) ends the transfer at once: nothing to undo. Its
//     compensation, the refund, is a Deposit of Amount back to From.
//  2. credit: Deposit Amount to To, tried CreditTries times with
//     CreditBackoff between tries; when every try is rejected (To is not
//     open), the debit is compensated: From is refunded.
//
// Neither step has a timeout: a refund sent for a debit that may not have
// happened would create money, so the saga waits for the debit's outcome
// (the processor answers every command it reads). Compensations are
// retried 5 times, 100 ms apart (doubling), each within 10 s; one that
// still fails leaves the instance in sagas.StatusCompensationFailed.
func NewTransferSaga(typ, commandsTopic string) (*sagas.Definition[Transfer], error) {
	on := func(account string, payload any) sagas.Command {
		return sagas.Command{Topic: commandsTopic, AggregateID: account, Payload: payload}
	}
	return sagas.Define(typ, TransferSagaVersion, []sagas.Step[Transfer]{
		{
			Name:         "debit",
			Action:       func(t Transfer) (sagas.Command, error) { return on(t.From, Withdraw{Amount: t.Amount}), nil },
			Compensation: func(t Transfer) (sagas.Command, error) { return on(t.From, Deposit{Amount: t.Amount}), nil },
			Done:         func(t Transfer, _ orchestrix.Outcome) Transfer { t.Debited = true; return t },
		},
		{
			Name:   "credit",
			Action: func(t Transfer) (sagas.Command, error) { return on(t.To, Deposit{Amount: t.Amount}), nil },
			Policy: sagas.Retry(CreditBackoff, CreditTries),
		},
	}, sagas.CompensationPolicy[Transfer](sagas.Retry(100*time.Millisecond, 5), 10*time.Second))
}

// Transfer results, as TransferResult names them.
const (
	// ResultCompleted: From was debited and To credited.
	ResultCompleted = "completed"
	// ResultDeclined: the debit was refused; nothing moved.
	ResultDeclined = "declined"
	// ResultRefunded: the credit failed and From was refunded.
	ResultRefunded = "refunded"
	// ResultCompensationFailed: the refund failed; an operator must act
	// (`orchestrix sagas retry`).
	ResultCompensationFailed = "compensation_failed"
	// ResultRunning: not finished yet.
	ResultRunning = "running"
)

// TransferResult names what became of a transfer saga instance whose
// state is t.
func TransferResult(status sagas.Status, t Transfer) string {
	switch status {
	case sagas.StatusCompleted:
		return ResultCompleted
	case sagas.StatusCompensated:
		if t.Debited {
			return ResultRefunded
		}
		return ResultDeclined
	case sagas.StatusCompensationFailed:
		return ResultCompensationFailed
	}
	return ResultRunning
}
