package main

import (
	"path/filepath"
	"testing"
)

// TestImage builds the image tarball from this checkout and checks it:
// non-root user, the entrypoint present, executable and starting.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and the examples")
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := build("../..", out, "orchestrix:test"); err != nil {
		t.Fatal(err)
	}
	if err := checkImage(out); err != nil {
		t.Fatal(err)
	}
}
