package storetest

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// SeaweedFS is a SeaweedFS of the test's own on 127.0.0.1: one `weed
// server` process (StartSeaweedFS), or a distributed one
// (StartSeaweedCluster). Clients reach it through its S3 (the embedded
// front door: the gateway, or the balancer in front of the gateways);
// each process can be stopped and started through its WeedServer.
type SeaweedFS struct {
	*S3
	// Server is the one process of StartSeaweedFS; nil for a cluster.
	Server *WeedServer
	// Master, Volumes, Filers and Gateways are a cluster's processes.
	Master                    *WeedServer
	Volumes, Filers, Gateways []*WeedServer

	t  testing.TB
	lb *balancer
}

// SeaweedLayout is the shape of a distributed SeaweedFS.
type SeaweedLayout struct {
	// Volumes, Filers and Gateways count the processes of each role
	// (default 3, 2, 2). There is one master.
	Volumes, Filers, Gateways int
}

// StartSeaweedFS starts `weed server` with a filer and an S3 gateway in
// one process on free 127.0.0.1 ports, its data in t.TempDir(), waits
// until a new bucket takes writes, and kills it when the test ends.
// Without a weed binary the test fails; MMSIDECAR_TEST_MINIO=off skips
// it (the switch of every real-store test).
func StartSeaweedFS(t testing.TB) *SeaweedFS {
	t.Helper()
	skipIfOff(t)
	bin, err := FindWeed()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sw, ports := newSeaweed(t, dir, 4)
	master, volume, filer, s3 := ports[0], ports[1], ports[2], ports[3]
	srv := sw.server(bin, "server", 1, dir, weedArgs("server",
		"-dir="+filepath.Join(dir, "data"),
		fmt.Sprintf("-master.port=%d", master), "-master.peers=none", "-master.telemetry=false", fmt.Sprintf("-master.volumeSizeLimitMB=%d", weedVolumeMB),
		fmt.Sprintf("-volume.port=%d", volume), "-volume.max=0", "-volume.preStopSeconds=0",
		"-filer", fmt.Sprintf("-filer.port=%d", filer),
		"-s3", fmt.Sprintf("-s3.port=%d", s3), "-s3.config="+filepath.Join(dir, "s3.json"),
		"-s3.port.iceberg=0", "-s3.port.lance=0"))
	srv.Addr = fmt.Sprintf("127.0.0.1:%d", s3)
	sw.Endpoint, sw.Server = srv.Addr, srv
	srv.ready = func(exited <-chan struct{}) error { return waitS3Ready(sw.S3, exited, readyTimeout) }
	t.Cleanup(srv.Kill)
	sw.start(srv)
	return sw
}

// StartSeaweedCluster starts a distributed SeaweedFS of the test's own:
// one master (replication 001: every volume has a copy on a second
// volume server, so one can die), layout.Volumes volume servers,
// layout.Filers filers (each with its own embedded metadata store) and
// layout.Gateways S3 gateways, each gateway given every filer with its
// own first, behind a TCP balancer. It waits until a new bucket takes
// writes and kills every process when the test ends; a failed test shows
// the end of every log.
func StartSeaweedCluster(t testing.TB, layout SeaweedLayout) *SeaweedFS {
	t.Helper()
	skipIfOff(t)
	if layout == (SeaweedLayout{}) {
		layout = SeaweedLayout{Volumes: 3, Filers: 2, Gateways: 2}
	}
	if layout.Volumes < 2 || layout.Filers < 1 || layout.Gateways < 1 {
		t.Fatalf("StartSeaweedCluster: %+v: want at least 2 volume servers (replication %s), 1 filer and 1 gateway", layout, weedReplication)
	}
	bin, err := FindWeed()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sw, ports := newSeaweed(t, dir, 1+layout.Volumes+layout.Filers+layout.Gateways)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("SeaweedFS logs:\n%s", sw.logTails())
		}
	})
	t.Cleanup(sw.shutdown)
	masterAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	sw.Master = sw.server(bin, "master", 1, dir, weedArgs("master", fmt.Sprintf("-port=%d", ports[0]),
		"-mdir="+filepath.Join(dir, "master"), "-peers=none", "-telemetry=false",
		"-defaultReplication="+weedReplication, fmt.Sprintf("-volumeSizeLimitMB=%d", weedVolumeMB)))
	sw.Master.ready = httpReady(sw.Master, "/cluster/status")
	ports = ports[1:]
	for i := range layout.Volumes {
		v := sw.server(bin, "volume", i+1, dir, weedArgs("volume", fmt.Sprintf("-port=%d", ports[i]),
			"-dir="+filepath.Join(dir, fmt.Sprintf("volume%d", i+1)), "-max=0", "-preStopSeconds=0",
			"-master="+masterAddr, "-dataCenter=dc1", "-rack=rack1"))
		v.ready = httpReady(v, "/status")
		sw.Volumes = append(sw.Volumes, v)
	}
	ports = ports[layout.Volumes:]
	var filers []string
	for i := range layout.Filers {
		f := sw.server(bin, "filer", i+1, dir, weedArgs("filer", fmt.Sprintf("-port=%d", ports[i]),
			"-master="+masterAddr, "-defaultStoreDir="+filepath.Join(dir, fmt.Sprintf("filer%d", i+1))))
		f.ready = httpReady(f, "/")
		sw.Filers = append(sw.Filers, f)
		filers = append(filers, f.Addr)
	}
	ports = ports[layout.Filers:]
	for i := range layout.Gateways {
		// Gateway i talks to filer i first, the others on failover.
		order := append(append([]string(nil), filers[i%len(filers):]...), filers[:i%len(filers)]...)
		g := sw.server(bin, "s3", i+1, dir, weedArgs("s3", fmt.Sprintf("-port=%d", ports[i]),
			"-filer="+strings.Join(order, ","), "-config="+filepath.Join(dir, "s3.json"),
			"-port.iceberg=0", "-port.lance=0"))
		g.ready = func(exited <-chan struct{}) error { return waitS3Ready(sw.Gateway(i), exited, readyTimeout) }
		sw.Gateways = append(sw.Gateways, g)
	}
	lb, err := newBalancer()
	if err != nil {
		t.Fatal(err)
	}
	sw.lb = lb
	var backends []string
	for _, g := range sw.Gateways {
		backends = append(backends, g.Addr)
	}
	lb.setBackends(backends)
	sw.Endpoint = lb.addr()
	sw.start(append(append(append([]*WeedServer{sw.Master}, sw.Volumes...), sw.Filers...), sw.Gateways...)...)
	return sw
}

// newSeaweed prepares an empty SeaweedFS with fresh credentials, its
// identities file in dir, and n ports of WeedPort.
func newSeaweed(t testing.TB, dir string, n int) (*SeaweedFS, []int) {
	t.Helper()
	sw := &SeaweedFS{t: t, S3: &S3{Name: "seaweedfs", AccessKey: "mmsidecar", SecretKey: "secret-" + strings.ToLower(rand.Text())}}
	if err := writeIdentities(filepath.Join(dir, "s3.json"), sw.AccessKey, sw.SecretKey); err != nil {
		t.Fatal(err)
	}
	ports, err := weedPorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return sw, ports
}

// server prepares one process (not started) with its log in dir and
// the directories its -dir, -mdir or -defaultStoreDir names.
func (sw *SeaweedFS) server(bin, role string, i int, dir string, args []string) *WeedServer {
	name := fmt.Sprintf("SeaweedFS %s %d", role, i)
	port := ""
	for _, a := range args {
		if p, ok := strings.CutPrefix(a, "-port="); ok {
			port = p
		}
		for _, flag := range []string{"-dir=", "-mdir=", "-defaultStoreDir="} {
			if d, ok := strings.CutPrefix(a, flag); ok {
				if err := os.MkdirAll(d, 0o755); err != nil {
					sw.t.Fatalf("%s: %v", name, err)
				}
			}
		}
	}
	return &WeedServer{Role: role, Addr: "127.0.0.1:" + port, t: nil,
		proc: process{name: name, bin: bin, args: args, dir: dir,
			logPath: filepath.Join(dir, fmt.Sprintf("%s%d.log", role, i))}}
}

// httpReady is the readiness check of a master, volume server or filer:
// its HTTP port answers path.
func httpReady(w *WeedServer, path string) func(<-chan struct{}) error {
	return func(exited <-chan struct{}) error { return waitHTTP("http://"+w.Addr+path, exited, readyTimeout) }
}

// start starts the given processes in order, each once the one before
// serves, then waits until a new bucket takes writes (a fresh SeaweedFS
// answers "No writable volumes" until the master has grown some).
func (sw *SeaweedFS) start(servers ...*WeedServer) {
	t := sw.t
	for _, w := range servers {
		w.t = t
		if err := w.start(); err != nil {
			t.Fatal(err)
		}
	}
	bucket := "mmsidecar-ready"
	createBucket(t, sw.Config(bucket))
	if err := WaitBucketWritable(sw.Config(bucket), 2*readyTimeout); err != nil {
		t.Fatalf("SeaweedFS at %s takes no writes: %v\n%s", sw.Endpoint, err, sw.logTails())
	}
}

// Gateway returns S3 gateway i (0-based) as an endpoint of its own,
// bypassing the balancer.
func (sw *SeaweedFS) Gateway(i int) *S3 {
	e := *sw.S3
	e.Endpoint = sw.Gateways[i].Addr
	return &e
}

// all lists every process.
func (sw *SeaweedFS) all() []*WeedServer {
	if sw.Server != nil {
		return []*WeedServer{sw.Server}
	}
	return append(append(append([]*WeedServer{sw.Master}, sw.Volumes...), sw.Filers...), sw.Gateways...)
}

// shutdown is the test cleanup: every process, then the balancer.
func (sw *SeaweedFS) shutdown() {
	for _, w := range sw.all() {
		if w != nil {
			w.Kill()
		}
	}
	if sw.lb != nil {
		sw.lb.close()
	}
}

// logTails returns the end of every process's log.
func (sw *SeaweedFS) logTails() string {
	var b strings.Builder
	for _, w := range sw.all() {
		if w != nil {
			fmt.Fprintf(&b, "--- %s (%s) %s ---\n%s\n", w.proc.name, w.Addr, w.proc.logPath, tail(w.proc.logPath))
		}
	}
	return b.String()
}

// PIDs returns the process ids of every running process (the bench
// reads their CPU time).
func (sw *SeaweedFS) PIDs() (pids []int) {
	for _, w := range sw.all() {
		if pid := w.PID(); pid != 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}
