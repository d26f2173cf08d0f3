package esdb_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/orchestrix/orchestrix"
	"github.com/orchestrix/orchestrix/stores/esdb"
)

// TestNewClientRedactsURL: a rejected base URL is quoted in the error
// without its password.
func TestNewClientRedactsURL(t *testing.T) {
	for _, u := range []string{"ftp://admin:s3cret@esdb:3000", "http://admin:s3cret@esdb:port", "http://admin:s3cret@"} {
		_, err := esdb.NewClient(u, "t")
		if !errors.Is(err, orchestrix.ErrInvalid) || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "admin:xxxxx@") {
			t.Errorf("NewClient(%q) = %v, want ErrInvalid quoting the URL without its password", u, err)
		}
	}
}
