package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// containerLabel marks the containers the container test starts; its
// value is the test process's PID, so that a later run can remove what a
// killed run left behind.
const containerLabel = "mmsidecar.deploytest.pid"

// runFlags are what every test container runs with: the host network (the
// test MinIO and the sidecars' listeners are on 127.0.0.1), a read-only
// root filesystem without podman's writable tmpfs mounts, and explicit
// ulimits. Rootful podman raises RLIMIT_NOFILE and RLIMIT_NPROC to
// 1048576 by default, which a runtime without CAP_SYS_RESOURCE (nested
// in another container, as on CI) may not do: runc then fails with
// "error setting rlimits for ready process: operation not permitted".
// The health check runs when the test says (`podman healthcheck run`),
// not from a timer: podman's timers need systemd.
var runFlags = []string{
	"--network=host", "--read-only", "--read-only-tmpfs=false",
	"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
	"--health-interval=disable",
}

// podman runs the podman CLI with the OCI runtime the container test
// uses: runc (crun, podman's default where installed, fails on CI's
// cgroup v1 hosts: "setrlimit RLIMIT_NOFILE: Operation not permitted",
// and with explicit ulimits "cgroups in hybrid mode not supported").
type podman struct {
	bin     string
	runtime string // runc's path, or "" for podman's default
	version string
}

// needPodman returns the podman to run the image with. When podman is
// missing or cannot run at all the test is skipped, loudly, unless
// storetest.EnvTestMinIO is "require" (scripts/test.sh, CI): then it fails.
func needPodman(t *testing.T) *podman {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv(storetest.EnvTestMinIO) == "require" {
			t.Fatalf("%s (%s=require: the container test must run; scripts/test.sh installs podman and runc)", msg, storetest.EnvTestMinIO)
		}
		t.Skipf("CONTAINER TEST DID NOT RUN: %s (apt-get install podman runc, or run scripts/test.sh)", msg)
	}
	if runtime.GOOS != "linux" {
		fail("podman runs the image on Linux only")
	}
	if os.Geteuid() != 0 {
		fail("the test runs rootful podman and gives the image's user the directories it mounts: run it as root")
	}
	bin, err := exec.LookPath("podman")
	if err != nil {
		fail("podman not found: %v", err)
	}
	p := &podman{bin: bin}
	for _, c := range []string{"runc", "/usr/sbin/runc"} {
		if path, err := exec.LookPath(c); err == nil {
			p.runtime = path
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := p.run(ctx, "version", "--format", "{{.Client.Version}}")
	if err != nil {
		fail("podman cannot run: %v\n%s", err, out)
	}
	p.version = strings.TrimSpace(out)
	p.sweep(t)
	return p
}

// run runs podman with args and returns its combined output.
func (p *podman) run(ctx context.Context, args ...string) (string, error) {
	var global []string
	if p.runtime != "" {
		global = []string{"--runtime", p.runtime}
	}
	out, err := exec.CommandContext(ctx, p.bin, append(global, args...)...).CombinedOutput()
	return string(out), err
}

// must runs podman with args within 3 minutes and fails the test on error.
func (p *podman) must(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := p.run(ctx, args...)
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// sweep removes containers that an earlier, killed test run left behind.
func (p *podman) sweep(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := p.run(ctx, "ps", "-a", "--filter", "label="+containerLabel,
		"--format", `{{.Names}} {{index .Labels "`+containerLabel+`"}}`)
	if err != nil {
		t.Logf("podman ps: %v\n%s", err, out)
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, pidText, ok := strings.Cut(line, " ")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		if out, err := p.run(ctx, "rm", "-f", "-t", "0", name); err != nil {
			t.Logf("remove stale container %s: %v\n%s", name, err, out)
		}
	}
}

// testImage is the image the container test builds once per test binary.
var testImage struct {
	once sync.Once
	p    *podman
	name string
	err  error
	log  string
}

// buildImage builds deploy/Dockerfile's final stage with podman, the
// build stage replaced by its output on the host (runBuildStage), and the
// repository root as the build context, as a release build has it.
// `--format docker` keeps the HEALTHCHECK; --pull=never proves that the
// final stage needs nothing from a registry.
func buildImage(t *testing.T, p *podman) (string, stageOutput) {
	t.Helper()
	stage := runBuildStage(t)
	testImage.once.Do(func() {
		testImage.p = p
		name := fmt.Sprintf("localhost/mmsidecar-deploytest:%d", os.Getpid())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		testImage.log, testImage.err = p.run(ctx, "build", "--format", "docker", "--pull=never", "--layers=false",
			"-f", repoPath(t, "deploy", "Dockerfile"),
			"--build-context", buildStage+"="+stage.Root,
			"--build-arg", "VERSION="+stage.Version, "--build-arg", "REVISION="+stage.Revision,
			"--build-arg", "TARGETOS="+runtime.GOOS, "--build-arg", "TARGETARCH="+runtime.GOARCH,
			"-t", name, repoRoot(t))
		testImage.name = name
	})
	if testImage.err != nil {
		t.Fatalf("podman build: %v\n%s", testImage.err, testImage.log)
	}
	return testImage.name, stage
}

// removeTestImage removes the image buildImage built.
func removeTestImage() {
	if testImage.p == nil || testImage.err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := testImage.p.run(ctx, "rmi", "-f", testImage.name); err != nil {
		fmt.Fprintf(os.Stderr, "podman rmi %s: %v\n%s", testImage.name, err, out)
	}
}

// containerState is the part of `podman inspect` the test reads.
type containerState struct {
	State struct {
		Status   string
		Running  bool
		Pid      int
		ExitCode int
		Health   struct{ Status string }
	}
	HostConfig struct{ ReadonlyRootfs bool }
}

// inspect returns a container's state.
func (p *podman) inspect(t *testing.T, name string) containerState {
	t.Helper()
	var st []containerState
	if err := json.Unmarshal([]byte(p.must(t, "inspect", "--type", "container", name)), &st); err != nil || len(st) != 1 {
		t.Fatalf("podman inspect %s: %v (%d results)", name, err, len(st))
	}
	return st[0]
}
