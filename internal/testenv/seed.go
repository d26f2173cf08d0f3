package testenv

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// SeedEnv replays a test's random choices: set it to the seed a failed
// run logged.
const SeedEnv = "ORCHESTRIX_TEST_SEED"

// Seed returns the seed of a test's random choices: from SeedEnv when set
// (to replay a run), else from the clock. It logs the seed.
func Seed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(SeedEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, v, err)
		}
		seed = n
	}
	t.Logf("random choices: seed %d (replay with %s=%d)", seed, SeedEnv, seed)
	return seed
}
