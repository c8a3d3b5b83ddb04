// Command images is `make images`: it builds Warren's binaries (static, CGO_ENABLED=0, -trimpath,
// -ldflags "-s -w -X main.version=<tag>") and packs them into container images without a Docker
// daemon:
//
//	<registry>/warren-controller:<tag>  /usr/local/bin/warren-controller
//	<registry>/warren-ztunnel:<tag>     /usr/local/bin/warren-ztunnel and /usr/local/bin/warren-cni
//	<registry>/warren-waypoint:<tag>    /usr/local/bin/warren-waypoint
//
// It writes them into one OCI image layout at <out>/oci (what the lab pulls from; `skopeo copy
// oci:<out>/oci:<tag>` or `ctr images import` read it too) and one `docker save` tarball per image at
// <out>/<name>-<tag>.tar (for `docker load` and `kind load image-archive`; with several --goarch,
// <out>/<name>-<tag>-linux-<arch>.tar), then prints a table of reference, platform, digest and size.
//
// Usage:
//
//	go run ./test/images --out bin/images --tag 0.1.0 [--registry ghcr.io/warren-mesh] [--goarch amd64,arm64]
//	go run ./test/images --bin-dir DIR ...   # pack binaries already built for one architecture
//
// $SOURCE_DATE_EPOCH, when set, is the images' creation time; otherwise it is the Unix epoch, so the
// same sources give the same digests. It is a command, nothing imports it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/warren-mesh/warren/test/images/oci"
)

// image is one of Warren's images: its name and the binaries (cmd/<name>) it holds, entrypoint first.
type image struct {
	name     string
	binaries []string
}

var warrenImages = []image{
	{name: "warren-controller", binaries: []string{"warren-controller"}},
	{name: "warren-ztunnel", binaries: []string{"warren-ztunnel", "warren-cni"}},
	{name: "warren-waypoint", binaries: []string{"warren-waypoint"}},
}

// Config is what one run builds.
type Config struct {
	// Out receives oci/ (the layout) and the tarballs.
	Out string
	// Tag is the images' tag and the binaries' version stamp.
	Tag string
	// Registry prefixes the image names.
	Registry string
	// GOARCHes are the architectures to build for (GOOS is linux).
	GOARCHes []string
	// ModuleDir is the Warren module's root, where `go build ./cmd/...` runs.
	ModuleDir string
	// BinDir, when set, holds binaries already built for the single GOARCH: nothing is compiled.
	BinDir string
	// GoCmd is the go command.
	GoCmd string
	// Source is the org.opencontainers.image.source label.
	Source string
	// Created is the images' creation time (zero: the Unix epoch).
	Created time.Time
}

// Builder makes Warren's images.
type Builder struct {
	cfg Config
	log *slog.Logger
}

var (
	archRe = regexp.MustCompile(`^[a-z0-9]+$`)
	tagRe  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// New checks cfg.
func New(cfg Config, log *slog.Logger) (*Builder, error) {
	if cfg.Out == "" {
		return nil, errors.New("--out is empty")
	}
	if !tagRe.MatchString(cfg.Tag) {
		return nil, fmt.Errorf("--tag %q is not a valid image tag (letters, digits, _ . -, at most 128)", cfg.Tag)
	}
	if cfg.Registry == "" || strings.HasSuffix(cfg.Registry, "/") {
		return nil, fmt.Errorf("--registry %q: want a registry and path without a trailing slash, e.g. ghcr.io/warren-mesh", cfg.Registry)
	}
	if len(cfg.GOARCHes) == 0 {
		return nil, errors.New("--goarch is empty")
	}
	seen := map[string]bool{}
	for _, a := range cfg.GOARCHes {
		if !archRe.MatchString(a) {
			return nil, fmt.Errorf("--goarch: %q is not a GOARCH (e.g. amd64, arm64)", a)
		}
		if seen[a] {
			return nil, fmt.Errorf("--goarch: %s given twice", a)
		}
		seen[a] = true
	}
	if cfg.BinDir != "" && len(cfg.GOARCHes) != 1 {
		return nil, errors.New("--bin-dir holds binaries of one architecture: give a single --goarch")
	}
	for _, img := range warrenImages {
		if _, _, err := oci.NormalizeRef(ref(cfg, img.name)); err != nil {
			return nil, fmt.Errorf("--registry %q: %w", cfg.Registry, err)
		}
	}
	if cfg.GoCmd == "" {
		cfg.GoCmd = "go"
	}
	return &Builder{cfg: cfg, log: log}, nil
}

func ref(cfg Config, name string) string { return cfg.Registry + "/" + name + ":" + cfg.Tag }

// Run builds the binaries, the images, the layout and the tarballs, and prints the table to w.
func (b *Builder) Run(ctx context.Context, w io.Writer) error {
	cfg := b.cfg
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return fmt.Errorf("create --out: %w", err)
	}
	var built []*oci.Built
	for _, arch := range cfg.GOARCHes {
		binDir := cfg.BinDir
		if binDir == "" {
			tmp, err := os.MkdirTemp("", "warren-images-"+arch+"-")
			if err != nil {
				return fmt.Errorf("build binaries: %w", err)
			}
			defer os.RemoveAll(tmp)
			if err := b.goBuild(ctx, arch, tmp); err != nil {
				return err
			}
			binDir = tmp
		}
		for _, img := range warrenImages {
			spec := oci.Spec{
				Ref:     ref(cfg, img.name),
				Arch:    arch,
				Version: cfg.Tag,
				Source:  cfg.Source,
				Title:   img.name,
				Created: cfg.Created,
			}
			for _, bin := range img.binaries {
				spec.Binaries = append(spec.Binaries, oci.Binary{Path: filepath.Join(binDir, bin)})
			}
			bi, err := oci.Build(spec)
			if err != nil {
				return err
			}
			built = append(built, bi)
		}
	}
	layout := filepath.Join(cfg.Out, "oci")
	if err := oci.Write(layout, built...); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REF\tPLATFORM\tDIGEST\tSIZE\tTARBALL")
	for _, bi := range built {
		name := strings.TrimSuffix(filepath.Base(bi.Ref), ":"+bi.Tag) + "-" + bi.Tag
		if len(cfg.GOARCHes) > 1 {
			name += "-" + strings.ReplaceAll(bi.Platform, "/", "-")
		}
		tarball := filepath.Join(cfg.Out, name+".tar")
		if err := bi.WriteTarball(tarball); err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", bi.Ref, bi.Platform, bi.Digest, humanSize(bi.Size), tarball)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "OCI layout: %s\n", layout)
	return nil
}

// goBuild compiles the binaries of every image for linux/arch into dir.
func (b *Builder) goBuild(ctx context.Context, arch, dir string) error {
	var pkgs []string
	for _, img := range warrenImages {
		for _, bin := range img.binaries {
			pkgs = append(pkgs, "./cmd/"+bin)
		}
	}
	args := append([]string{"build", "-trimpath", "-ldflags", "-s -w -X main.version=" + b.cfg.Tag, "-o", dir + string(filepath.Separator)}, pkgs...)
	b.log.Info("building binaries", "goarch", arch, "packages", pkgs)
	cmd := exec.CommandContext(ctx, b.cfg.GoCmd, args...)
	cmd.Dir = b.cfg.ModuleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build for linux/%s (in %s): %w\n%s", arch, b.cfg.ModuleDir, err, out)
	}
	return nil
}

func humanSize(n int64) string {
	const mib = 1 << 20
	if n >= mib {
		return fmt.Sprintf("%.1f MiB", float64(n)/mib)
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/1024)
}

// parseFlags turns the command line and the environment into a Config.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var goarch string
	fs.StringVar(&cfg.Out, "out", "bin/images", "directory for oci/ (the OCI layout) and the image tarballs")
	fs.StringVar(&cfg.Tag, "tag", "0.1.0", "image tag and version stamp")
	fs.StringVar(&cfg.Registry, "registry", "ghcr.io/warren-mesh", "registry and path the image names go under")
	fs.StringVar(&goarch, "goarch", runtime.GOARCH, "comma-separated GOARCHes to build for")
	fs.StringVar(&cfg.ModuleDir, "module-dir", ".", "root of the Warren module")
	fs.StringVar(&cfg.BinDir, "bin-dir", "", "pack the binaries already in this directory instead of building them (one --goarch)")
	fs.StringVar(&cfg.Source, "source", "https://github.com/warren-mesh/warren", "org.opencontainers.image.source label")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() != 0 {
		return Config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.GOARCHes = strings.Split(goarch, ",")
	cfg.GoCmd = getenv("GO")
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil || sec < 0 {
			return Config{}, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a count of seconds since 1970", s)
		}
		cfg.Created = time.Unix(sec, 0)
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	b, err := New(cfg, log)
	if err != nil {
		return err
	}
	return b.Run(ctx, stdout)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}
