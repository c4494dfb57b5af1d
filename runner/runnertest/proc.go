package runnertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// WorkerEnv is the environment variable through which WorkerCommand hands
// a WorkerSpec to a re-executed test binary.
const WorkerEnv = "MMSIDECAR_RUNNERTEST_WORKER"

// Hop is one queue a worker process runs, as in Worker.
type Hop struct {
	Queue         string
	Next          string
	Poll          time.Duration
	MinAge        time.Duration
	PreserveEvery int
}

// WorkerSpec describes a worker process: the runners of one Mailman node.
type WorkerSpec struct {
	QueueDir string
	Node     string
	Ledger   string
	Owner    *Owner
	Hops     []Hop
}

// WorkerCommand returns a command that re-executes the running test
// binary as a worker process for spec. The test binary's TestMain must
// call MaybeRunWorker first. The process stops on SIGTERM or SIGINT.
func WorkerCommand(spec WorkerSpec) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), WorkerEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	return cmd, nil
}

// MaybeRunWorker runs a worker process and exits if WorkerEnv is set;
// otherwise it returns at once. Call it first in TestMain.
func MaybeRunWorker() {
	js := os.Getenv(WorkerEnv)
	if js == "" {
		return
	}
	var spec WorkerSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "runnertest worker: bad spec: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := RunWorkers(ctx, spec); err != nil {
		fmt.Fprintf(os.Stderr, "runnertest worker: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// RunWorkers runs one Worker per hop of spec until ctx ends or one fails.
func RunWorkers(ctx context.Context, spec WorkerSpec) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(spec.Hops))
	for _, h := range spec.Hops {
		w := &Worker{
			QueueDir: spec.QueueDir, Queue: h.Queue, Next: h.Next, Node: spec.Node,
			Poll: h.Poll, MinAge: h.MinAge, PreserveEvery: h.PreserveEvery,
			Ledger: spec.Ledger, Owner: spec.Owner,
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(ctx); err != nil {
				errs <- fmt.Errorf("queue %s: %w", w.Queue, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
