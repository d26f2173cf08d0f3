package codec

import (
	"net/url"
	"testing"
)

// FuzzPlainPath checks that every source plainPath lets skip url.Parse is
// one url.Parse accepts.
func FuzzPlainPath(f *testing.F) {
	for _, s := range []string{"/orders", "orders-service", "a/b.c_d~e", "", "..", "//host/x", "/a:b", "http://x", "%zz", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if plainPath(s) {
			if _, err := url.Parse(s); err != nil {
				t.Fatalf("plainPath(%q) but url.Parse: %v", s, err)
			}
		}
	})
}
