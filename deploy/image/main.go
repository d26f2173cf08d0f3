// Command image builds the Orchestrix OCI image without Docker: it
// compiles the CLI, the examples and the exporter as static binaries, puts them in one
// layer with a non-root user, the CA certificates of the build machine and
// nothing else, and writes an OCI image tarball (docker load, podman load,
// crane push, kind load image-archive all take it).
//
//	cd deploy/image && go run . -o ../../orchestrix-image.tar [-tag orchestrix:dev]
//	go run . -check ../../orchestrix-image.tar    # what CI runs: the image's binary starts, as its user
//
// It is a module of its own so that the core does not depend on
// go-containerregistry.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's user: an unprivileged ID, as distroless' nonroot.
const uid = 65532

// binaries are the programs in the image: the module directory to build
// in (from the repository's root), the package there, and the name in
// /usr/local/bin. The exporter is a module of its own (it imports
// client_golang, which the core must not).
var binaries = [][3]string{
	{".", "./cmd/orchestrix", "orchestrix"},
	{".", "./examples/notifications", "orchestrix-notifications"},
	{".", "./examples/banking/cmd/banking", "orchestrix-banking"},
	{".", "./examples/ecommerce", "orchestrix-ecommerce"},
	{"deploy/exporter", ".", "orchestrix-exporter"},
}

func main() {
	out := flag.String("o", "orchestrix-image.tar", "the image tarball to write")
	tag := flag.String("tag", "orchestrix:dev", "the image's reference in the tarball")
	root := flag.String("root", "../..", "the repository's root")
	check := flag.String("check", "", "check an image tarball instead of building one")
	flag.Parse()
	var err error
	if *check != "" {
		err = checkImage(*check)
	} else {
		err = build(*root, *out, *tag)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func build(root, out, tag string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "orchestrix-image")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	files := map[string][]byte{}
	for _, b := range binaries {
		bin := filepath.Join(tmp, b[2])
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, b[1])
		cmd.Dir = filepath.Join(root, b[0])
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", filepath.Join(b[0], b[1]), err)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		files["usr/local/bin/"+b[2]] = data
	}
	if ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		files["etc/ssl/certs/ca-certificates.crt"] = ca
	}
	files["etc/passwd"] = fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, uid)
	files["etc/group"] = fmt.Appendf(nil, "root:x:0:\nnonroot:x:%d:\n", uid)
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar(files))), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = runtime.GOARCH, "linux"
	cfg.Config.User = fmt.Sprintf("%d:%d", uid, uid)
	cfg.Config.WorkingDir = "/home/nonroot"
	cfg.Config.Entrypoint = []string{"/usr/local/bin/orchestrix"}
	cfg.Config.Env = []string{"PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"}
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.source": "https://github.com/orchestrix/orchestrix", "org.opencontainers.image.title": "orchestrix"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return err
	}
	d, _ := img.Digest()
	fmt.Printf("wrote %s (%s, %s)\n", out, tag, d)
	return nil
}

// layerTar is one layer holding files (and their directories), owned by
// root, world-readable; binaries executable.
func layerTar(files map[string][]byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mtime := time.Unix(0, 0)
	for _, p := range sortedKeys(files) {
		for d := filepath.Dir(p); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	dirs["home/nonroot"], dirs["home"], dirs["tmp"] = true, true, true
	for _, d := range sortedKeys(dirs) {
		mode, owner := int64(0o755), 0
		switch d {
		case "home/nonroot":
			owner = uid
		case "tmp":
			mode = 0o1777
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, Uid: owner, Gid: owner, ModTime: mtime})
	}
	for _, p := range sortedKeys(files) {
		mode := int64(0o644)
		if strings.HasPrefix(p, "usr/local/bin/") {
			mode = 0o755
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(files[p])), ModTime: mtime})
		_, _ = tw.Write(files[p])
	}
	_ = tw.Close()
	return buf.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// checkImage reads an image tarball and checks what a runtime would rely
// on: a non-root user, the entrypoint present and executable, and that it
// starts (`orchestrix -h` from the image's own layer, run here as the
// image's user when this process may switch to it).
func checkImage(path string) error {
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	if cfg.Config.User == "" || strings.HasPrefix(cfg.Config.User, "0") || strings.HasPrefix(cfg.Config.User, "root") {
		return fmt.Errorf("the image runs as %q, want a non-root user", cfg.Config.User)
	}
	if len(cfg.Config.Entrypoint) == 0 {
		return errors.New("the image has no entrypoint")
	}
	dir, err := os.MkdirTemp("", "orchestrix-image-check")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := extract(img, dir); err != nil {
		return err
	}
	entry := filepath.Join(dir, cfg.Config.Entrypoint[0])
	st, err := os.Stat(entry)
	if err != nil || st.Mode()&0o111 == 0 {
		return fmt.Errorf("entrypoint %s missing or not executable: %v", cfg.Config.Entrypoint[0], err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(entry, "-h")
	cmd.Env = cfg.Config.Env
	out, _ := cmd.CombinedOutput() // -h exits with the usage
	if !strings.Contains(string(out), "orchestrix") || !strings.Contains(string(out), "relay") {
		return fmt.Errorf("the image's entrypoint did not start: %s", out)
	}
	// Every program of the image starts and prints its usage.
	for _, b := range binaries {
		cmd := exec.Command(filepath.Join(dir, "usr/local/bin", b[2]), "-h")
		cmd.Env = cfg.Config.Env
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "Usage") && !strings.Contains(string(out), "usage") {
			return fmt.Errorf("%s in the image did not start: %s", b[2], out)
		}
	}
	ls, _ := img.Layers()
	size := int64(0)
	for _, l := range ls {
		s, _ := l.Size()
		size += s
	}
	fmt.Printf("ok: %s runs as %s, entrypoint %v and %d programs start, %d layer(s), %.1f MB compressed\n", path, cfg.Config.User, cfg.Config.Entrypoint, len(binaries), len(ls), float64(size)/1e6)
	return nil
}

// extract writes the image's files (every layer in order) under dir.
func extract(img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o755)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			f.Close()
		}
	}
}
