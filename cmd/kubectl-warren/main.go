// Command kubectl-warren is the kubectl plugin for Warren (kubectl warren ...): identity and
// policy debugging through the API server. Installed on PATH as kubectl-warren (or with krew,
// manifests/krew/warren.yaml). See package internal/cli for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/warren-mesh/warren/cmd/kubectl-warren/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
