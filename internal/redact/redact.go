// Package redact removes credentials from text before it is printed or
// logged: passwords in URLs' user information (postgres://user:secret@host,
// http://user:secret@host), and the values of password, token and secret
// parameters in URL queries and key=value connection strings
// (password=secret, sslpassword=..., api_token=...).
//
// Use it on every message that may carry a connection string: error
// messages the CLI prints, log lines, script output.
package redact

import (
	"flag"
	"regexp"
)

// Mask replaces each redacted value.
const Mask = "xxxxx"

var (
	// userinfo: scheme://user:password@ — the password ends at the last
	// "@" before the host, so a password may itself hold "@" or ":".
	userinfo = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'"]*):([^\s/?#'"]*)@`)
	// param: password=..., sslpassword=..., api_token=..., secret=...
	// in a query or a key=value string; a quoted value may hold spaces.
	param = regexp.MustCompile(`(?i)\b([A-Za-z_\-]*(?:password|passwd|pwd|token|secret)\s*=\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;'"]+)`)
)

// Text returns s with every credential it recognizes replaced by Mask.
// Text without credentials is returned unchanged.
func Text(s string) string {
	s = userinfo.ReplaceAllString(s, "${1}:"+Mask+"@")
	return param.ReplaceAllString(s, "${1}"+Mask)
}

// URL returns a connection URL or key=value connection string with its
// credentials replaced by Mask; it is Text, named for the call sites that
// print one URL.
func URL(s string) string { return Text(s) }

// Error returns err with its message redacted by Text; errors.Is and
// errors.As still see err. It returns nil for nil.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return redacted{err}
}

type redacted struct{ err error }

func (r redacted) Error() string { return Text(r.err.Error()) }
func (r redacted) Unwrap() error { return r.err }

// FlagValue returns a flag.Value that sets *p and shows *p through URL:
// a flag whose default is a connection string from the environment
// (DATABASE_URL) appears in -h and usage messages without its password.
// The value set is not altered.
func FlagValue(p *string) flag.Value { return (*urlFlag)(p) }

type urlFlag string

func (u *urlFlag) String() string {
	if u == nil {
		return ""
	}
	return URL(string(*u))
}

func (u *urlFlag) Set(s string) error { *u = urlFlag(s); return nil }
