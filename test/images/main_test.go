package main

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/test/images/oci"
)

var binaries = []string{"warren-controller", "warren-ztunnel", "warren-cni", "warren-waypoint"}

// fakeModule writes a module with a tiny cmd/<name> for each Warren binary; each prints its name and
// main.version.
func fakeModule(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/fake\n\ngo 1.24\n")
	for _, b := range binaries {
		write("cmd/"+b+"/main.go", `package main

import (
	"fmt"
	"os"
)

var version string

func main() { fmt.Println("`+b+`", version, os.Args[1:]) }
`)
	}
	return dir
}

// binDir writes a file per Warren binary whose content is its name.
func binDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range binaries {
		if err := os.WriteFile(filepath.Join(dir, b), []byte(b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func env(kv ...string) func(string) string {
	return func(k string) string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1]
			}
		}
		return ""
	}
}

func runImages(t testing.TB, getenv func(string) string, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, getenv, &stdout, &stderr)
	if err != nil {
		t.Logf("stderr:\n%s", stderr.String())
	}
	return stdout.String(), err
}

func TestRunBuildsFromSource(t *testing.T) {
	out := filepath.Join(t.TempDir(), "images")
	stdout, err := runImages(t, env(), "--out", out, "--tag", "0.1.0", "--module-dir", fakeModule(t), "--registry", "example.com/warren")
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	t.Logf("stdout:\n%s", stdout)
	l, err := oci.Open(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	refs, err := l.Images()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.com/warren/warren-controller:0.1.0", "example.com/warren/warren-waypoint:0.1.0", "example.com/warren/warren-ztunnel:0.1.0"}
	if diff := cmp.Diff(want, refs); diff != "" {
		t.Errorf("images (-want +got):\n%s", diff)
	}
	for _, r := range want {
		img, err := l.Find(r)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(stdout, r+"  ") || !strings.Contains(stdout, img.Digest) {
			t.Errorf("the table does not show %s with digest %s", r, img.Digest)
		}
		tarball := filepath.Join(out, strings.TrimSuffix(filepath.Base(r), ":0.1.0")+"-0.1.0.tar")
		if _, err := os.Stat(tarball); err != nil {
			t.Errorf("tarball: %v", err)
		}
	}

	img, err := l.Find("example.com/warren/warren-ztunnel:0.1.0")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/usr/local/bin/warren-ztunnel"}, img.Config.Entrypoint); diff != "" {
		t.Errorf("ztunnel entrypoint (-want +got):\n%s", diff)
	}
	if got := img.Config.Labels[oci.LabelVersion]; got != "0.1.0" {
		t.Errorf("version label %q; want 0.1.0", got)
	}
	rootfs, err := img.Extract(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"warren-ztunnel", "warren-cni"} {
		p := filepath.Join(rootfs, "usr/local/bin", b)
		f, err := elf.Open(p)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if f.Section(".interp") != nil {
			t.Errorf("%s is dynamically linked; want CGO_ENABLED=0", b)
		}
		if f.Section(".symtab") != nil {
			t.Errorf("%s has a symbol table; want -ldflags -s", b)
		}
		f.Close()
		if runtime.GOOS != "linux" {
			continue
		}
		got, err := exec.Command(p, "x").CombinedOutput()
		if err != nil {
			t.Fatalf("run %s: %v\n%s", b, err, got)
		}
		if want := b + " 0.1.0 [x]"; strings.TrimSpace(string(got)) != want {
			t.Errorf("%s printed %q; want %q (version stamped with -X main.version)", b, got, want)
		}
	}
}

func TestRunPacksBinDir(t *testing.T) {
	bins := binDir(t)
	out := filepath.Join(t.TempDir(), "images")
	args := []string{"--out", out, "--tag", "9.9.9", "--bin-dir", bins}
	if _, err := runImages(t, env(), args...); err != nil {
		t.Fatalf("run: %v", err)
	}
	l, err := oci.Open(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := l.Find("ghcr.io/warren-mesh/warren-ztunnel:9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := img.Extract(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"warren-ztunnel", "warren-cni"} {
		got, err := os.ReadFile(filepath.Join(rootfs, "usr/local/bin", b))
		if err != nil || string(got) != b {
			t.Errorf("%s in the ztunnel image = %q, %v", b, got, err)
		}
	}

	// The same binaries again give the same digest; SOURCE_DATE_EPOCH changes it.
	if _, err := runImages(t, env(), args...); err != nil {
		t.Fatal(err)
	}
	again, err := l.Find("ghcr.io/warren-mesh/warren-ztunnel:9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != img.Digest {
		t.Errorf("rebuilding the same binaries changed the digest: %s then %s", img.Digest, again.Digest)
	}
	if _, err := runImages(t, env("SOURCE_DATE_EPOCH", "1767225600"), args...); err != nil {
		t.Fatal(err)
	}
	dated, err := l.Find("ghcr.io/warren-mesh/warren-ztunnel:9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	if dated.Digest == img.Digest {
		t.Errorf("SOURCE_DATE_EPOCH did not change the digest")
	}
	refs, _ := l.Images()
	if len(refs) != 3 {
		t.Errorf("after three runs the layout has %d images; want 3", len(refs))
	}
}

func TestRunMultiArchTarballNames(t *testing.T) {
	out := filepath.Join(t.TempDir(), "images")
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	goarch := runtime.GOARCH + "," + other
	if _, err := runImages(t, env(), "--out", out, "--goarch", goarch, "--module-dir", fakeModule(t)); err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, a := range []string{runtime.GOARCH, other} {
		p := filepath.Join(out, "warren-waypoint-0.1.0-linux-"+a+".tar")
		if _, err := os.Stat(p); err != nil {
			t.Errorf("tarball for %s: %v", a, err)
		}
	}
	l, err := oci.Open(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := l.Find("ghcr.io/warren-mesh/warren-waypoint:0.1.0")
	if err != nil {
		t.Fatal(err)
	}
	if img.Platform != oci.HostPlatform() {
		t.Errorf("Find picked %s; want %s", img.Platform, oci.HostPlatform())
	}
}

func TestRunBadInput(t *testing.T) {
	bins := binDir(t)
	missing := t.TempDir()
	tests := []struct {
		name   string
		getenv func(string) string
		args   []string
		want   string
	}{
		{"bad tag", env(), []string{"--tag", "bad tag"}, `--tag "bad tag" is not a valid image tag`},
		{"empty registry", env(), []string{"--registry", ""}, `--registry ""`},
		{"trailing slash", env(), []string{"--registry", "ghcr.io/x/"}, "without a trailing slash"},
		{"bad registry", env(), []string{"--registry", "Ghcr.io/UPPER"}, `--registry "Ghcr.io/UPPER"`},
		{"empty goarch", env(), []string{"--goarch", "amd64,,arm64"}, `--goarch: "" is not a GOARCH`},
		{"goarch twice", env(), []string{"--goarch", "amd64,amd64"}, "--goarch: amd64 given twice"},
		{"bin-dir and two goarch", env(), []string{"--goarch", "amd64,arm64", "--bin-dir", bins}, "give a single --goarch"},
		{"bin-dir missing a binary", env(), []string{"--bin-dir", missing}, "was it built?"},
		{"extra argument", env(), []string{"images"}, `unexpected arguments ["images"]`},
		{"unknown flag", env(), []string{"--nope"}, "flag provided but not defined"},
		{"bad SOURCE_DATE_EPOCH", env("SOURCE_DATE_EPOCH", "yesterday"), nil, `SOURCE_DATE_EPOCH "yesterday"`},
		{"go build fails", env(), []string{"--module-dir", missing}, "go build for linux/"},
		{"no go", env("GO", "/nonexistent/go"), nil, "go build for linux/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--out", filepath.Join(t.TempDir(), "images")}, tt.args...)
			_, err := runImages(t, tt.getenv, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run: %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{512: "0.5 KiB", 3 << 20: "3.0 MiB", 1536 << 10: "1.5 MiB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q; want %q", n, got, want)
		}
	}
}
