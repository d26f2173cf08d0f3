package check

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// anchor is GitHub's anchor of a heading: lower case, spaces to dashes,
// punctuation dropped.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestGuideLinks: every relative link of docs/deployment.md names a file
// that exists, and every #anchor a heading of the file it points to.
func TestGuideLinks(t *testing.T) {
	const guide = "../../docs/deployment.md"
	b, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	headings := func(path string) map[string]bool {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		inCode := false
		for _, l := range strings.Split(string(src), "\n") {
			if strings.HasPrefix(l, "```") {
				inCode = !inCode
			}
			if !inCode && strings.HasPrefix(l, "#") {
				out[anchor(strings.TrimLeft(l, "#"))] = true
			}
		}
		return out
	}
	n := 0
	for _, m := range regexp.MustCompile(`\]\(([^)\s]+)\)`).FindAllStringSubmatch(string(b), -1) {
		link := m[1]
		if strings.HasPrefix(link, "http") {
			continue
		}
		n++
		file, frag, _ := strings.Cut(link, "#")
		target := guide
		if file != "" {
			target = filepath.Join(filepath.Dir(guide), file)
			if _, err := os.Stat(target); err != nil {
				t.Errorf("link %s: %v", link, err)
				continue
			}
		}
		if frag != "" && strings.HasSuffix(target, ".md") && !headings(target)[frag] {
			t.Errorf("link %s: no heading #%s in %s", link, frag, target)
		}
	}
	if n < 10 {
		t.Fatalf("only %d links checked", n)
	}
	t.Logf("%d relative links resolve", n)
}
