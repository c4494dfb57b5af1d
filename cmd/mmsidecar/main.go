// Command mmsidecar mirrors GNU Mailman's queue directories into an
// S3-compatible store and coordinates several Mailman nodes through it.
//
//	mmsidecar <run|status|check|drain|health|config|version|help> [flags]
//
// Configuration comes from MMSIDECAR_* environment variables; `mmsidecar
// config` lists every one with its default, meaning and the value in
// effect (.env.example is generated from the same table). Exit codes: 0
// ok, 2 configuration or usage error, 1 anything else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitConfig = 2
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string) error
}

// commands lists the subcommands in usage order.
func commands() []command {
	return []command{
		{"run", "run the sidecar daemon", runRun},
		{"status", "show what the store holds: leases, entries per node and queue", runStatus},
		{"check", "validate the configuration, reach the store and probe its conditional writes", runCheck},
		{"drain", "hand this node's unstarted backlog to the other nodes, then exit; -cancel undoes it", runDrain},
		{"health", "exit 0 when the local daemon is ready (for container health checks)", runHealth},
		{"config", "print every MMSIDECAR_ variable: meaning, default, value in effect and its source", runConfig},
		{"version", "print version, commit and Go version", runVersion},
	}
}

func main() {
	os.Exit(realMain(context.Background(), os.Args[1:], os.Stderr))
}

// realMain dispatches to a subcommand and maps its error to an exit code.
func realMain(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitConfig
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		printUsage(stderr)
		return exitOK
	case "-version", "--version", "-v":
		name, args = "version", []string{"version"}
	case "help":
		// `help CMD` is `CMD -h`.
		if len(args) < 2 {
			printUsage(stderr)
			return exitOK
		}
		if len(args) > 2 {
			fmt.Fprintf(stderr, "mmsidecar help: one command at a time\n")
			return exitConfig
		}
		name, args = args[1], []string{args[1], "-h"}
	}
	for _, c := range commands() {
		if c.name == name {
			return exitCode(stderr, name, c.run(ctx, args[1:]))
		}
	}
	fmt.Fprintf(stderr, "mmsidecar: unknown command %q\n\n", name)
	printUsage(stderr)
	return exitConfig
}

// exitCode reports err on stderr and returns its exit code.
func exitCode(stderr io.Writer, name string, err error) int {
	var ce *ConfigError
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		// The flag package has printed the problem and the flags.
		return exitConfig
	case errors.As(err, &ce):
		var multi interface{ Unwrap() []error }
		if errors.As(err, &multi) && len(multi.Unwrap()) > 1 {
			fmt.Fprintf(stderr, "mmsidecar %s: configuration errors:\n", name)
			for _, e := range multi.Unwrap() {
				fmt.Fprintf(stderr, "  %v\n", e)
			}
			return exitConfig
		}
		fmt.Fprintf(stderr, "mmsidecar %s: configuration error: %v\n", name, err)
		return exitConfig
	}
	fmt.Fprintf(stderr, "mmsidecar %s: %v\n", name, err)
	return exitFailed
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: mmsidecar <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'mmsidecar help <command>' (or 'mmsidecar <command> -h') for what a")
	fmt.Fprintln(w, "command does and its flags. Configuration is read from MMSIDECAR_*")
	fmt.Fprintln(w, "environment variables: 'mmsidecar config' prints every one with its")
	fmt.Fprintln(w, "meaning, default and the value in effect.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "exit codes: 0 ok, 2 configuration or usage error, 1 anything else")
}

// usageError is a bad command line; the flag package has already
// explained it.
type usageError struct{ err error }

// Error implements error.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns the flag package's error.
func (e *usageError) Unwrap() error { return e.err }

// parseFlags parses a subcommand's flags, turning a parse failure into a
// usageError (exit 2) and rejecting positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err}
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintf(fs.Output(), "%v\n", err)
		fs.Usage()
		return &usageError{err}
	}
	return nil
}

// newFlagSet returns a flag set for a subcommand that writes to stderr.
func newFlagSet(name, summary string) *flag.FlagSet {
	fs := flag.NewFlagSet("mmsidecar "+name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: mmsidecar %s [flags]\n\n%s\n", name, summary)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprintln(w, "\nflags:")
			fs.PrintDefaults()
		}
		fmt.Fprintln(w, "\nConfiguration: MMSIDECAR_* environment variables; 'mmsidecar config' prints")
		fmt.Fprintln(w, "every one with its meaning, default and the value in effect.")
		fmt.Fprintln(w, "Exit codes: 0 ok, 2 configuration or usage error, 1 anything else.")
	}
	return fs
}

// signalError is the cancellation cause of a context canceled by a signal.
type signalError struct{ sig os.Signal }

// Error implements error.
func (e signalError) Error() string { return "received " + e.sig.String() }

// shutdownSignals are the signals that stop the sidecar.
var shutdownSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// signalContexts derives two contexts from parent for run: the first
// SIGINT or SIGTERM cancels drain (stop taking work, finish what is in
// flight), a second cancels abort (stop now), and a third gets the
// signal's default action. Canceling abort also cancels drain.
// context.Cause names the signal. stop releases the handler.
func signalContexts(parent context.Context) (drain, abort context.Context, stop func()) {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, shutdownSignals...)
	drain, abort, stopWatch := contextsFromSignals(parent, ch)
	// Once aborted, stop intercepting: a third signal gets the default
	// action and ends a process that is stuck.
	context.AfterFunc(abort, func() { signal.Stop(ch) })
	return drain, abort, func() {
		signal.Stop(ch)
		stopWatch()
	}
}

// contextsFromSignals is signalContexts reading signals from sigs.
func contextsFromSignals(parent context.Context, sigs <-chan os.Signal) (drain, abort context.Context, stop func()) {
	abort, cancelAbort := context.WithCancelCause(parent)
	drain, cancelDrain := context.WithCancelCause(abort)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		n := 0
		for {
			select {
			case sig := <-sigs:
				n++
				if n == 1 {
					cancelDrain(signalError{sig})
					continue
				}
				cancelAbort(signalError{sig})
				return
			case <-done:
				return
			case <-abort.Done():
				return
			}
		}
	}()
	return drain, abort, func() {
		close(done)
		<-finished
		cancelDrain(context.Canceled)
		cancelAbort(context.Canceled)
	}
}

// interruptContext is for the short commands: the first SIGINT or SIGTERM
// cancels the context.
func interruptContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, shutdownSignals...)
}
