package deploytest

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// testVersion and testRevision are injected through the Dockerfile's -X
// main.version and -X main.commit flags (the image is built without .git,
// so the toolchain's VCS stamp is not there to say it).
const (
	testVersion  = "v0.0.0-deploytest"
	testRevision = "0123456789abcdef-deploytest"
)

// dockerBuild is the `go build` command line of deploy/Dockerfile's build
// stage, with the ARG defaults expanded.
type dockerBuild struct {
	Env  []string // KEY=VALUE before `go build`
	Args []string // after `go build`, without -o and its value
	Pkg  string
}

// buildCommand extracts the RUN ... go build line from deploy/Dockerfile.
func buildCommand(t *testing.T) dockerBuild {
	t.Helper()
	df := parseDockerfile(t, readRepoFile(t, "deploy/Dockerfile"))
	var runs []instruction
	for _, in := range df.find("RUN", "*") {
		if strings.Contains(in.Args, "go build") {
			runs = append(runs, in)
		}
	}
	if len(runs) != 1 {
		t.Fatalf("deploy/Dockerfile: want exactly one RUN with `go build`, found %d", len(runs))
	}
	in := runs[0]
	vars := map[string]string{}
	for k, v := range df.Args[""] {
		vars[k] = v
	}
	for k, v := range df.Args[in.Stage] {
		vars[k] = v
	}
	vars["VERSION"], vars["REVISION"] = testVersion, testRevision
	vars["TARGETOS"], vars["TARGETARCH"] = runtime.GOOS, runtime.GOARCH
	words, err := shellWords(in.Args)
	if err != nil {
		t.Fatalf("Dockerfile line %d: %v", in.Line, err)
	}
	var b dockerBuild
	i := 0
	for ; i < len(words) && strings.HasPrefix(words[i], "--"); i++ { // RUN flags (--mount=...)
	}
	for ; i < len(words) && strings.Contains(words[i], "=") && words[i] != "go"; i++ {
		kv, err := expand(words[i], vars)
		if err != nil {
			t.Fatalf("Dockerfile line %d: %v", in.Line, err)
		}
		b.Env = append(b.Env, kv)
	}
	if i+1 >= len(words) || words[i] != "go" || words[i+1] != "build" {
		t.Fatalf("Dockerfile line %d: expected [ENV=VALUE...] go build ..., got %q", in.Line, words[i:])
	}
	rest := words[i+2:]
	for j := 0; j < len(rest); j++ {
		w, err := expand(rest[j], vars)
		if err != nil {
			t.Fatalf("Dockerfile line %d: %v", in.Line, err)
		}
		switch {
		case w == "-o":
			j++ // the output path is the test's choice
		case strings.HasPrefix(w, "-o="):
		case strings.HasPrefix(w, "./"):
			b.Pkg = w
		default:
			b.Args = append(b.Args, w)
		}
	}
	if b.Pkg != "./cmd/mmsidecar" {
		t.Fatalf("Dockerfile line %d: builds %q, want ./cmd/mmsidecar", in.Line, b.Pkg)
	}
	return b
}

var built struct {
	once sync.Once
	path string
	out  string
	err  error
	cmd  dockerBuild
}

// staticBinary builds ./cmd/mmsidecar with the Dockerfile's flags, once
// per test binary, and returns its path.
func staticBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.cmd = buildCommand(t)
		dir, err := os.MkdirTemp("", "deploytest-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "mmsidecar")
		args := append([]string{"build"}, built.cmd.Args...)
		args = append(args, "-o", built.path, built.cmd.Pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = repoRoot(t)
		// The Dockerfile's settings win over the caller's (CGO_ENABLED
		// in particular); GOFLAGS is dropped so that a -race from the
		// caller cannot sneak in.
		cmd.Env = append(withoutVars(os.Environ(), "GOFLAGS"), built.cmd.Env...)
		out, err := cmd.CombinedOutput()
		built.out, built.err = string(out), err
	})
	if built.err != nil {
		t.Fatalf("go build with the Dockerfile's flags %v %v: %v\n%s", built.cmd.Env, built.cmd.Args, built.err, built.out)
	}
	return built.path
}

func withoutVars(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// TestDockerfileStaticBuild runs the Dockerfile's `go build` line and
// checks the binary the image would ship: static (no interpreter, no
// shared libraries), stripped, built with -trimpath, and carrying the
// version passed through -ldflags -X.
func TestDockerfileStaticBuild(t *testing.T) {
	b := buildCommand(t)
	if !contains(b.Env, "CGO_ENABLED=0") {
		t.Errorf("Dockerfile go build runs without CGO_ENABLED=0: %v", b.Env)
	}
	bin := staticBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("open ELF: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has a PT_INTERP program header: it needs a dynamic loader")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
	if f.Section(".dynamic") != nil {
		t.Errorf("binary has a .dynamic section: not statically linked")
	}
	if f.Section(".symtab") != nil {
		t.Errorf("binary has a symbol table: -ldflags -s is missing")
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if root := repoRoot(t); bytes.Contains(data, []byte(root+string(filepath.Separator))) {
		t.Errorf("binary contains the build directory %s: -trimpath is missing", root)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	if !strings.Contains(string(out), "mmsidecar "+testVersion+" (commit "+testRevision+",") {
		t.Errorf("version output %q does not carry the -X main.version and main.commit values %q, %q", out, testVersion, testRevision)
	}
	// `file` is what CI logs show; the ELF checks above do not need it.
	if path, err := exec.LookPath("file"); err == nil {
		out, err := exec.Command(path, "-b", bin).Output()
		if err != nil {
			t.Fatalf("file: %v", err)
		}
		if !strings.Contains(string(out), "statically linked") {
			t.Errorf("file says %q, want statically linked", strings.TrimSpace(string(out)))
		}
		t.Logf("file: %s", strings.TrimSpace(string(out)))
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestDockerfileRuntime checks the runtime stage: non-root numeric user
// from build args defaulting to mailman-core's mailman (100:65533),
// mmsidecar as entry point with run as command, OCI labels, the listen
// port exposed, a HEALTHCHECK that uses only a subcommand that exists,
// and a Go version no older than go.mod's.
func TestDockerfileRuntime(t *testing.T) {
	df := parseDockerfile(t, readRepoFile(t, "deploy/Dockerfile"))
	img := imageFacts(t)
	if img.UID == 0 || img.GID == 0 {
		t.Errorf("runtime user %d:%d is root", img.UID, img.GID)
	}
	if img.UID != 100 || img.GID != 65533 {
		t.Errorf("default user %d:%d, want mailman-core's mailman 100:65533", img.UID, img.GID)
	}
	if img.QueueDir != "/opt/mailman/var/queue" {
		t.Errorf("MMSIDECAR_QUEUE_DIR %q, want mailman-core's /opt/mailman/var/queue", img.QueueDir)
	}
	if got := df.last(t, "EXPOSE").Args; got != fmt.Sprint(img.ListenPort) {
		t.Errorf("EXPOSE %s, want the listen port %d", got, img.ListenPort)
	}
	entry := jsonArray(t, df.last(t, "ENTRYPOINT"))
	if len(entry) != 1 || filepath.Base(entry[0]) != "mmsidecar" {
		t.Errorf("ENTRYPOINT %v, want the mmsidecar binary alone", entry)
	}
	if cmd := jsonArray(t, df.last(t, "CMD")); len(cmd) != 1 || cmd[0] != "run" {
		t.Errorf("CMD %v, want [run]", cmd)
	}
	var copied bool
	for _, in := range df.find("COPY", df.Instrs[len(df.Instrs)-1].Stage) {
		if strings.HasSuffix(in.Args, " "+entry[0]) {
			copied = true
		}
	}
	if !copied {
		t.Errorf("no COPY puts the binary at the ENTRYPOINT path %s", entry[0])
	}
	labels := strings.Join(collectArgs(df.find("LABEL", "*")), " ")
	for _, l := range []string{"title", "description", "source", "version", "revision"} {
		if !strings.Contains(labels, "org.opencontainers.image."+l+"=") {
			t.Errorf("OCI label org.opencontainers.image.%s missing", l)
		}
	}
	hc := df.last(t, "HEALTHCHECK").Args
	if hc != "NONE" {
		words, _ := shellWords(hc)
		sub := ""
		for i, w := range words {
			if filepath.Base(strings.Trim(w, `[]",`)) == "mmsidecar" && i+1 < len(words) {
				sub = strings.Trim(words[i+1], `[]",`)
			}
		}
		if !subcommands(t)[sub] {
			t.Errorf("HEALTHCHECK %q does not run an existing mmsidecar subcommand (have %v)", hc, subcommands(t))
		}
	}
	goMod := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(readRepoFile(t, "go.mod"))
	img0 := regexp.MustCompile(`^(\d+)\.(\d+)`).FindStringSubmatch(df.Args[""]["GO_VERSION"])
	if goMod == nil || img0 == nil {
		t.Fatalf("cannot compare Go versions: go.mod %v, Dockerfile GO_VERSION %q", goMod, df.Args[""]["GO_VERSION"])
	}
	if atoi(img0[1])*1000+atoi(img0[2]) < atoi(goMod[1])*1000+atoi(goMod[2]) {
		t.Errorf("Dockerfile GO_VERSION %s is older than go.mod's go %s.%s", df.Args[""]["GO_VERSION"], goMod[1], goMod[2])
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func collectArgs(ins []instruction) []string {
	var out []string
	for _, in := range ins {
		out = append(out, in.Args)
	}
	return out
}

// subcommands returns the subcommand names registered in
// cmd/mmsidecar/main.go's commands().
func subcommands(t *testing.T) map[string]bool {
	t.Helper()
	src := readRepoFile(t, "cmd/mmsidecar/main.go")
	_, body, ok := strings.Cut(src, "func commands() []command {")
	if !ok {
		t.Fatal("cmd/mmsidecar/main.go: commands() not found")
	}
	body, _, _ = strings.Cut(body, "\n}\n")
	out := make(map[string]bool)
	for _, m := range regexp.MustCompile(`\{"([a-z]+)",`).FindAllStringSubmatch(body, -1) {
		out[m[1]] = true
	}
	if !out["run"] || !out["drain"] {
		t.Fatalf("commands() parsed as %v: run and drain missing", out)
	}
	return out
}

// TestMinioDockerfilePinned checks that deploy/minio builds the MinIO
// version the test suite runs against (scripts/test.sh), which has the
// conditional-write quorum fix.
func TestMinioDockerfilePinned(t *testing.T) {
	df := parseDockerfile(t, readRepoFile(t, "deploy/minio/Dockerfile"))
	m := regexp.MustCompile(`(?m)^MINIO_VERSION=(\S+)$`).FindStringSubmatch(readRepoFile(t, "scripts/test.sh"))
	if m == nil {
		t.Fatal("scripts/test.sh: MINIO_VERSION not found")
	}
	for stage, args := range df.Args {
		if v, ok := args["MINIO_VERSION"]; ok && v != m[1] {
			t.Errorf("deploy/minio/Dockerfile stage %q: MINIO_VERSION %s, scripts/test.sh tests %s", stage, v, m[1])
		}
	}
	var installs int
	for _, in := range df.find("RUN", "*") {
		if strings.Contains(in.Args, "github.com/minio/minio@${MINIO_VERSION}") {
			installs++
		}
	}
	if installs != 1 {
		t.Errorf("deploy/minio/Dockerfile: want one go install of github.com/minio/minio@${MINIO_VERSION}, found %d", installs)
	}
}
