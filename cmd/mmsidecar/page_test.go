package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// artifactsDir is where tests leave files for people to look at (the
// cluster page's screenshot): MMSIDECAR_TEST_ARTIFACTS, which
// scripts/test.sh sets and prints, or ~/.cache/mmsidecar/artifacts.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MMSIDECAR_TEST_ARTIFACTS")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(home, ".cache", "mmsidecar", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// chromium finds Debian's chromium. It is required where the MinIO suites
// are (scripts/test.sh installs it), skipped loudly elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(storetest.EnvTestMinIO) == "require" {
		t.Fatalf("chromium is not installed, and %s=require: scripts/test.sh installs Debian's chromium", storetest.EnvTestMinIO)
	}
	t.Skip("SKIPPED: chromium is not installed (scripts/test.sh installs Debian's chromium)")
	return ""
}

// headlessFlags start chromium headless, quiet (no network of its own,
// no updates, no sync) and with a fresh profile.
func headlessFlags(t *testing.T) []string {
	return []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}
}

// headless runs chromium headless on url with extra flags and returns
// its standard output.
func headless(t *testing.T, bin, url string, flags ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(append(headlessFlags(t), flags...), url)...)
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", flags, err, stderr.String())
	}
	return stdout.String()
}

// browse opens url in a headless chromium that stays up until the
// returned function closes it.
func browse(t *testing.T, bin, url string) (close func()) {
	t.Helper()
	cmd := exec.Command(bin, append(headlessFlags(t), "--remote-debugging-port=0", url)...)
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := false
	close = func() {
		if !done {
			done = true
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		}
	}
	t.Cleanup(close)
	return close
}

// pageRequests reads how many GET / the daemon served from its metrics.
func pageRequests(t *testing.T, d *daemonProc) int {
	t.Helper()
	_, body, err := d.get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`mmsidecar_http_requests_total\{code="200",route="GET /\{\$\}"\} (\d+)`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestClusterPageInChromium: the page at / renders the state of a live
// cluster on MinIO in a real headless Chromium: both live nodes with their
// lease state, epoch and entries per queue, the claims, this node's
// pending work, and the takeover of a third node killed with SIGKILL; it
// reloads itself. A screenshot is left in the artifacts directory.
func TestClusterPageInChromium(t *testing.T) {
	bin := chromium(t)
	m := storetest.Shared(t)
	bucket := m.NewBucket(t)
	node := func(id string) map[string]string {
		env := clusterEnv(t, id, filepath.Join(t.TempDir(), "unused"), "MMSIDECAR_S3_ENDPOINT", m.Endpoint, "MMSIDECAR_S3_BUCKET", bucket,
			"MMSIDECAR_S3_ACCESS_KEY", m.AccessKey, "MMSIDECAR_S3_SECRET_KEY", m.SecretKey)
		if err := os.Mkdir(filepath.Join(env["MMSIDECAR_QUEUE_DIR"], "out"), 0o770); err != nil {
			t.Fatal(err)
		}
		return env
	}
	envs := map[string]map[string]string{"a": node("a"), "b": node("b"), "c": node("c")}
	procs := map[string]*daemonProc{}
	for _, id := range []string{"a", "b", "c"} {
		procs[id] = startDaemon(t, envs[id])
	}
	for _, id := range []string{"a", "b", "c"} {
		procs[id].waitReadyz(time.Minute, http.StatusOK, "ready")
	}
	enqueue(t, envs["a"]["MMSIDECAR_QUEUE_DIR"], "in", 4)
	enqueue(t, envs["b"]["MMSIDECAR_QUEUE_DIR"], "out", 2)
	enqueue(t, envs["c"]["MMSIDECAR_QUEUE_DIR"], "in", 5)
	a := procs["a"]
	a.waitFor(time.Minute, "c's entries mirrored", func() bool {
		q := localQueueOf(t, procs["c"], "in")
		return q.Pck == 5 && q.Unmirrored == 0
	})
	// c dies (SIGKILL): a and b declare it dead and take its 5 over.
	procs["c"].cmd.Process.Kill()
	a.waitFor(2*time.Minute, "c's entries taken over", func() bool {
		na := countPck(t, envs["a"]["MMSIDECAR_QUEUE_DIR"], "in")
		nb := countPck(t, envs["b"]["MMSIDECAR_QUEUE_DIR"], "in")
		return na+nb == 4+5
	})
	url := "http://" + a.addr + "/"
	var dom string
	// The page's store view is cached for a few seconds, and a's events
	// are sampled each second: wait until the page shows the takeover.
	a.waitFor(time.Minute, "the page to show the takeover", func() bool {
		dom = headless(t, bin, url, "--dump-dom")
		return strings.Contains(dom, "took over entries (takeover)") && regexp.MustCompile(`data-node="c">\s*<td>c</td><td class="state-dead">`).MatchString(dom)
	})
	checks := []struct{ what, re string }{
		{"a live, epoch 1", `data-node="a">\s*<td>a</td><td class="state-live">live</td><td class="n">1</td>`},
		{"b live, epoch 1", `data-node="b">\s*<td>b</td><td class="state-live">live</td><td class="n">1</td>`},
		{"c declared dead", `data-node="c">\s*<td>c</td><td class="state-dead">dead</td>`},
		{"b's queue out with 2 entries and their age", `<div data-queue="out">out: 2 \([0-9.]+m?s ago\)</div>`},
		{"lease ages", `<td class="n">[0-9.]+m?s</td><td class="n">\d+</td>`},
		{"the claims count", `<span id="claims">\d+</span>`},
		{"a's pending uploads", `<span id="pending-uploads">\d+</span>`},
		{"a's pending deletes", `<span id="pending-deletes">\d+</span>`},
		{"a's local queue in", `<tr data-queue="in"><td>in</td><td class="n">\d+</td>`},
		{"peer c's death in the events", `<li data-kind="peer">.*peer c is dead`},
		{"the takeover in the events", `<li data-kind="takeover">.*took over entries \(takeover\): \d`},
		{"ready", `<span id="ready">ready</span>`},
	}
	for _, c := range checks {
		if !regexp.MustCompile(c.re).MatchString(dom) {
			t.Errorf("the page lacks %s (%s)", c.what, c.re)
		}
	}
	if strings.Contains(dom, "SINGLE-HOST") || strings.Contains(dom, "0001-01-01") {
		t.Errorf("the page shows a warning or a zero time that does not apply")
	}
	// It reloads itself: with the page open in a browser that stays up
	// (nothing dumped), GET / is served again and again.
	before := pageRequests(t, a)
	open := browse(t, bin, url)
	a.waitFor(time.Minute, "the open page to reload itself twice", func() bool { return pageRequests(t, a)-before >= 3 })
	open()
	shot := filepath.Join(artifactsDir(t), "cluster-page.png")
	headless(t, bin, url, "--window-size=1280,1000", "--hide-scrollbars", "--screenshot="+shot)
	if fi, err := os.Stat(shot); err != nil || fi.Size() < 10000 {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	t.Logf("screenshot of the cluster page: %s", shot)
	if t.Failed() {
		os.WriteFile(filepath.Join(artifactsDir(t), "cluster-page.html"), []byte(dom), 0o644)
		fmt.Println(dom)
	}
}
