// Package flagenv holds the two helpers every command line of the
// repository (the orchestrix CLI, the examples' programs) uses for flags
// that the environment may set: a default from an environment variable,
// and a comma-separated list.
package flagenv

import (
	"os"
	"strings"
)

// Or returns the environment variable key, or def when it is empty: the
// default of a flag that the environment may set.
func Or(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// List splits a comma-separated list (--brokers, KAFKA_BROKERS, --fail),
// dropping blanks around and between the items; nil for none.
func List(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
