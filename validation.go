package orchestrix

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one field of a command.
type FieldError struct {
	// Path names the field, e.g. "amount" or "lines[2].sku".
	Path string `json:"path"`
	// Code is a stable machine-readable reason, e.g. "required", "min".
	Code string `json:"code"`
	// Message is for humans.
	Message string `json:"message"`
}

// ValidationError reports why a command is invalid, field by field. It
// matches ErrRejected with errors.Is: a command that fails validation is a
// rejection, never retried.
type ValidationError struct {
	Fields []FieldError
}

// Error lists the fields.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("validation failed")
	for i, f := range e.Fields {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s (%s)", f.Path, f.Message, f.Code)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrRejected) true.
func (e *ValidationError) Is(target error) bool { return target == ErrRejected }

// Validation collects field errors; its zero value is ready to use.
type Validation struct{ fields []FieldError }

// Check records a field error when ok is false.
func (v *Validation) Check(ok bool, path, code, message string) {
	if !ok {
		v.fields = append(v.fields, FieldError{Path: path, Code: code, Message: message})
	}
}

// Err returns a *ValidationError when any check failed, nil otherwise.
func (v *Validation) Err() error {
	if len(v.fields) == 0 {
		return nil
	}
	return &ValidationError{Fields: v.fields}
}

// Rejection is a business-rule refusal (e.g. insufficient funds). It
// matches ErrRejected.
type Rejection struct {
	// Code is a stable machine-readable reason.
	Code string `json:"code"`
	// Message is for humans.
	Message string `json:"message"`
}

// Reject returns a *Rejection.
func Reject(code, message string) error { return &Rejection{Code: code, Message: message} }

// Error returns code and message.
func (r *Rejection) Error() string { return "rejected: " + r.Code + ": " + r.Message }

// Is makes errors.Is(err, ErrRejected) true.
func (r *Rejection) Is(target error) bool { return target == ErrRejected }
