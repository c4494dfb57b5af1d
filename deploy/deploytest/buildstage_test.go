package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// buildStage is the name of deploy/Dockerfile's stage that lays out the
// image's files under its OUT directory; the runtime stage copies them.
const buildStage = "build"

// stageOutput is the result of running the build stage on the host: Root
// stands for the stage's "/" (what `podman build --build-context
// build=Root` reads), so the stage's OUT directory is Root+OUT.
type stageOutput struct {
	Root string
	// Version and Revision are the VERSION and REVISION build args the
	// stage ran with: the checkout's `git describe` and commit.
	Version, Revision string
	// Binary is the binary's path on the host.
	Binary string
}

var built struct {
	once sync.Once
	out  stageOutput
	log  string
	err  error
}

// staticBinary returns the binary the Dockerfile's build stage built (see
// runBuildStage), built once per test binary.
func staticBinary(t *testing.T) string {
	t.Helper()
	return runBuildStage(t).Binary
}

// runBuildStage runs the RUN lines of deploy/Dockerfile's build stage on
// the host, once per test binary, in the repository root (the stage's
// `COPY . .` into its WORKDIR), with the stage's ARG defaults, the
// checkout's version and commit, this platform, and OUT moved under a
// temporary root. The stage's shell is /bin/sh, as in the golang image.
// GOFLAGS is dropped so that a -race from the caller cannot sneak in.
func runBuildStage(t *testing.T) stageOutput {
	t.Helper()
	built.once.Do(func() { built.out, built.log, built.err = execBuildStage(t) })
	if built.err != nil {
		t.Fatalf("deploy/Dockerfile build stage on the host: %v\n%s", built.err, built.log)
	}
	return built.out
}

func execBuildStage(t *testing.T) (stageOutput, string, error) {
	df := parseDockerfile(t, readRepoFile(t, "deploy/Dockerfile"))
	runs := stageRuns(t, df)
	b := buildCommand(t)
	root, err := os.MkdirTemp("", "deploytest-stage-")
	if err != nil {
		return stageOutput{}, "", err
	}
	out := stageOutput{Root: root, Binary: filepath.Join(root, b.Out)}
	out.Version, out.Revision = checkoutVersion(t)
	vars := map[string]string{}
	for k, v := range df.Args[""] {
		vars[k] = v
	}
	for k, v := range df.Args[buildStage] {
		vars[k] = v
	}
	vars["OUT"] = filepath.Join(root, df.Args[buildStage]["OUT"])
	vars["VERSION"], vars["REVISION"] = out.Version, out.Revision
	vars["TARGETOS"], vars["TARGETARCH"] = runtime.GOOS, runtime.GOARCH
	names := []string{"GOFLAGS"}
	for k := range vars {
		names = append(names, k)
	}
	env := withoutVars(os.Environ(), names...)
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	var log strings.Builder
	for _, in := range runs {
		cmd := exec.Command("/bin/sh", "-c", runCommand(in))
		cmd.Dir = repoRoot(t)
		cmd.Env = env
		o, err := cmd.CombinedOutput()
		log.Write(o)
		if err != nil {
			return out, log.String(), err
		}
	}
	return out, log.String(), nil
}

// stageRuns returns the build stage's RUN instructions, and fails when the
// stage holds anything the host run cannot reproduce.
func stageRuns(t *testing.T, df dockerfile) []instruction {
	t.Helper()
	var runs []instruction
	for _, in := range df.Instrs {
		if in.Stage != buildStage {
			continue
		}
		switch {
		case in.Cmd == "RUN":
			runs = append(runs, in)
		case in.Cmd == "FROM", in.Cmd == "ARG", in.Cmd == "WORKDIR", in.Cmd == "COPY" && in.Args == ". .":
		default:
			t.Fatalf("Dockerfile line %d: %s %s in the %s stage: the test runs that stage on the host and cannot reproduce it",
				in.Line, in.Cmd, in.Args, buildStage)
		}
	}
	if _, ok := df.Args[buildStage]["OUT"]; !ok || len(runs) == 0 {
		t.Fatalf("Dockerfile: no %s stage with ARG OUT and RUN lines", buildStage)
	}
	return runs
}

// runCommand is a RUN instruction's shell command, without its --flags.
func runCommand(in instruction) string {
	s := strings.TrimSpace(in.Args)
	for strings.HasPrefix(s, "--") {
		_, s, _ = strings.Cut(s, " ")
		s = strings.TrimSpace(s)
	}
	return s
}

// checkoutVersion returns what a release build passes as VERSION and
// REVISION: `git describe --tags --always --dirty` and the commit. Outside
// a git checkout it says so and returns stand-ins, so that the checks that
// the binary carries what it was given still run.
func checkoutVersion(t *testing.T) (version, revision string) {
	git := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = repoRoot(t)
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	version, revision = git("describe", "--tags", "--always", "--dirty"), git("rev-parse", "HEAD")
	if version == "" || len(revision) != 40 {
		t.Logf("NOT A GIT CHECKOUT (git describe %q, rev-parse %q): the image is built with stand-in version and commit", version, revision)
		return "v0.0.0-deploytest", strings.Repeat("0123456789", 4)
	}
	return version, revision
}
