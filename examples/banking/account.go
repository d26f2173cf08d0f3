// Package banking is the example domain used by `orchestrix demo` and the
// pipeline tests: a bank account that can be opened, credited and debited,
// where a withdrawal larger than the balance is rejected.
//
// Beside the account aggregate: the money-transfer saga over it
// ([NewTransferSaga]: debit, credit, refund when the credit fails) and the
// account-statement projection ([ApplyStatementMemory],
// [ApplyStatementPostgres]). The program that runs them as one service,
// with a self-check, `serve` and `drive`, is examples/banking/cmd/banking
// (see README.md).
package banking

import (
	"errors"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/aggregates"
	"github.com/orchestrix/orchestrix/codec"
)

// Account is the aggregate's state.
type Account struct {
	Opened  bool   `json:"opened"`
	Owner   string `json:"owner"`
	Balance int64  `json:"balance"`
}

// Commands.
type (
	// OpenAccount opens an account for an owner.
	OpenAccount struct {
		Owner string `json:"owner"`
	}
	// Deposit credits an account.
	Deposit struct {
		Amount int64 `json:"amount"`
	}
	// Withdraw debits an account; refused when the balance is too low.
	Withdraw struct {
		Amount int64 `json:"amount"`
	}
)

// Events.
type (
	// AccountOpened records an opened account.
	AccountOpened struct {
		Owner string `json:"owner"`
	}
	// Deposited records a credit.
	Deposited struct {
		Amount int64 `json:"amount"`
	}
	// Withdrawn records a debit.
	Withdrawn struct {
		Amount int64 `json:"amount"`
	}
)

// Validate checks the owner.
func (c OpenAccount) Validate() error {
	var v orchestrix.Validation
	v.Check(c.Owner != "", "owner", "required", "owner is required")
	v.Check(len(c.Owner) <= 100, "owner", "max_length", "owner is longer than 100 bytes")
	return v.Err()
}

// Validate checks the amount.
func (c Deposit) Validate() error { return checkAmount(c.Amount) }

// Validate checks the amount.
func (c Withdraw) Validate() error { return checkAmount(c.Amount) }

func checkAmount(n int64) error {
	var v orchestrix.Validation
	v.Check(n > 0, "amount", "min", "amount must be positive")
	v.Check(n <= 1_000_000_000, "amount", "max", "amount must be at most 1e9")
	return v.Err()
}

// Decide is the account's decision function.
func Decide(a Account, c orchestrix.Command) ([]any, error) {
	switch cmd := c.Payload.(type) {
	case OpenAccount:
		if a.Opened {
			return nil, orchestrix.Reject("already_open", "account is already open")
		}
		return []any{AccountOpened(cmd)}, nil
	case Deposit:
		if !a.Opened {
			return nil, orchestrix.Reject("not_open", "account is not open")
		}
		return []any{Deposited(cmd)}, nil
	case Withdraw:
		if !a.Opened {
			return nil, orchestrix.Reject("not_open", "account is not open")
		}
		if cmd.Amount > a.Balance {
			return nil, orchestrix.Reject("insufficient_funds", "balance is lower than the amount")
		}
		return []any{Withdrawn(cmd)}, nil
	}
	return nil, orchestrix.Reject("unknown_command", "account does not handle this command")
}

// Evolve is the account's evolve function.
func Evolve(a Account, e orchestrix.Event) Account {
	switch ev := e.Payload.(type) {
	case AccountOpened:
		a.Opened, a.Owner = true, ev.Owner
	case Deposited:
		a.Balance += ev.Amount
	case Withdrawn:
		a.Balance -= ev.Amount
	}
	return a
}

// Type names of commands and events.
const (
	TypeOpenAccount   = "banking.OpenAccount"
	TypeDeposit       = "banking.Deposit"
	TypeWithdraw      = "banking.Withdraw"
	TypeAccountOpened = "banking.AccountOpened"
	TypeDeposited     = "banking.Deposited"
	TypeWithdrawn     = "banking.Withdrawn"
)

// Register adds the banking commands and events to reg as JSON.
func Register(reg *codec.Registry) error {
	return errors.Join(
		codec.RegisterJSON[OpenAccount](reg, TypeOpenAccount),
		codec.RegisterJSON[Deposit](reg, TypeDeposit),
		codec.RegisterJSON[Withdraw](reg, TypeWithdraw),
		codec.RegisterJSON[AccountOpened](reg, TypeAccountOpened),
		codec.RegisterJSON[Deposited](reg, TypeDeposited),
		codec.RegisterJSON[Withdrawn](reg, TypeWithdrawn),
	)
}

// NewAggregate returns the account aggregate type.
func NewAggregate(opts ...aggregates.Option) (*aggregates.Aggregate[Account], error) {
	return aggregates.New("account", Decide, Evolve, opts...)
}
