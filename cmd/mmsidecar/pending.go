package main

import (
	"context"
	"errors"
)

// errNotBuilt marks a subcommand whose implementation is still to come.
var errNotBuilt = errors.New("not built yet")

// runRun is replaced by cmd_run.go.
func runRun(context.Context, []string) error { return errNotBuilt }

// runStatus is replaced by cmd_status.go.
func runStatus(context.Context, []string) error { return errNotBuilt }

// runDrain is replaced by cmd_drain.go.
func runDrain(context.Context, []string) error { return errNotBuilt }
