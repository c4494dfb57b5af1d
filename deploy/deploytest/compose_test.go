package deploytest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads files (relative to deploy/compose) with compose-go,
// schema validation and consistency checks on, interpolating only the
// variables of deploy/compose/.env.example (so a missing one fails).
func loadCompose(t *testing.T, files ...string) *types.Project {
	t.Helper()
	dir := repoPath(t, "deploy", "compose")
	env, err := dotenv.Read(filepath.Join(dir, ".env.example"))
	if err != nil {
		t.Fatalf("read deploy/compose/.env.example: %v", err)
	}
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, filepath.Join(dir, f))
	}
	opts, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(dir),
		cli.WithEnv(envList),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("load %v: %v", files, err)
	}
	return p
}

// TestComposeSingleMinio loads compose.yaml and checks its wiring.
func TestComposeSingleMinio(t *testing.T) {
	p := loadCompose(t, "compose.yaml")
	checkComposeCluster(t, p)
	minio := p.Services["minio"]
	if got := serverArgs(t, minio); len(got) != 1 || got[0] != "/data" {
		t.Errorf("minio: server %v, want a single drive /data", got)
	}
}

// TestComposeDistributedMinio loads compose.yaml with the four-node MinIO
// override and checks that it is one pool of four nodes that all answer
// to the sidecars' endpoint.
func TestComposeDistributedMinio(t *testing.T) {
	p := loadCompose(t, "compose.yaml", "compose.distributed-minio.yaml")
	checkComposeCluster(t, p)
	var nodes []string
	pools := map[string]bool{}
	for name, s := range p.Services {
		if !isMinioServer(s) {
			continue
		}
		nodes = append(nodes, name)
		args := serverArgs(t, s)
		if len(args) != 1 {
			t.Errorf("%s: server %v: one argument is one server pool", name, args)
			continue
		}
		pools[args[0]] = true
	}
	if len(nodes) != 4 {
		t.Fatalf("want 4 MinIO nodes, have %v", nodes)
	}
	if len(pools) != 1 {
		t.Fatalf("MinIO nodes disagree on the pool: %v", pools)
	}
	var pool string
	for k := range pools {
		pool = k
	}
	m := regexp.MustCompile(`^http://([a-z]+)\{1\.\.\.(\d+)\}:(\d+)(/\S+)$`).FindStringSubmatch(pool)
	if m == nil || m[2] != "4" {
		t.Fatalf("pool %q: want http://NAME{1...4}:PORT/PATH", pool)
	}
	for i := 1; i <= 4; i++ {
		host := fmt.Sprintf("%s%d", m[1], i)
		if owners := hostsOf(p, host); len(owners) != 1 || !isMinioServer(p.Services[owners[0]]) {
			t.Errorf("pool host %s resolves to %v, want exactly one MinIO node", host, owners)
		}
	}
}

func isMinioServer(s types.ServiceConfig) bool {
	return len(s.Command) >= 2 && s.Command[0] == "minio" && s.Command[1] == "server"
}

// serverArgs returns the drive/pool arguments of a `minio server` command.
func serverArgs(t *testing.T, s types.ServiceConfig) []string {
	t.Helper()
	if !isMinioServer(s) {
		t.Fatalf("%s: command %v is not `minio server`", s.Name, s.Command)
	}
	var out []string
	for i := 2; i < len(s.Command); i++ {
		if strings.HasPrefix(s.Command[i], "--") {
			i++
			continue
		}
		out = append(out, s.Command[i])
	}
	return out
}

// hostsOf returns the services reachable as host on the default network
// (by service name or alias).
func hostsOf(p *types.Project, host string) []string {
	var out []string
	for name, s := range p.Services {
		match := name == host
		for _, n := range s.Networks {
			if n != nil {
				for _, a := range n.Aliases {
					match = match || a == host
				}
			}
		}
		if match {
			out = append(out, name)
		}
	}
	return out
}

// checkComposeCluster checks the pairs of Mailman and sidecar containers.
func checkComposeCluster(t *testing.T, p *types.Project) {
	t.Helper()
	img := imageFacts(t)
	var sidecars []string
	nodeIDs := map[string]string{}
	for name, env := range composeSidecars(t, p) {
		s := p.Services[name]
		sidecars = append(sidecars, name)
		requiredVars(t, "compose "+name, env)
		if prev, dup := nodeIDs[env["MMSIDECAR_NODE_ID"]]; dup {
			t.Errorf("%s and %s share MMSIDECAR_NODE_ID %q", prev, name, env["MMSIDECAR_NODE_ID"])
		}
		nodeIDs[env["MMSIDECAR_NODE_ID"]] = name
		if env["MMSIDECAR_QUEUE_DIR"] != img.QueueDir {
			t.Errorf("%s: MMSIDECAR_QUEUE_DIR %q differs from the image's %q", name, env["MMSIDECAR_QUEUE_DIR"], img.QueueDir)
		}
		if s.User != fmt.Sprintf("%d:%d", img.UID, img.GID) {
			t.Errorf("%s: user %q, want the image's %d:%d", name, s.User, img.UID, img.GID)
		}
		if !s.ReadOnly || len(s.CapDrop) != 1 || s.CapDrop[0] != "ALL" {
			t.Errorf("%s: want read_only and cap_drop [ALL]", name)
		}
		for _, v := range []string{"MMSIDECAR_S3_ACCESS_KEY_FILE", "MMSIDECAR_S3_SECRET_KEY_FILE"} {
			if !hasSecretAt(s, env[v]) {
				t.Errorf("%s: %s=%q is not a secret of the service", name, v, env[v])
			}
		}
		checkEndpoint(t, p, name, env["MMSIDECAR_S3_ENDPOINT"])
		port := portOf(t, name+" MMSIDECAR_LISTEN_ADDR", env["MMSIDECAR_LISTEN_ADDR"])
		if port != img.ListenPort {
			t.Errorf("%s: listen port %d differs from the image's %d", name, port, img.ListenPort)
		}
		for _, pc := range s.Ports {
			if int(pc.Target) != port {
				t.Errorf("%s: publishes container port %d, not the listen port %d", name, pc.Target, port)
			}
			if pc.HostIP != "127.0.0.1" {
				t.Errorf("%s: publishes the listener (with POST /drain) on %q, want 127.0.0.1", name, pc.HostIP)
			}
		}
		checkPair(t, p, name, env, port)
	}
	if len(sidecars) != 2 {
		t.Fatalf("want two mmsidecar services (built from deploy/Dockerfile), have %v", sidecars)
	}
}

// composeSidecars returns the env of every service built from
// deploy/Dockerfile, by service name.
func composeSidecars(t *testing.T, p *types.Project) map[string]map[string]string {
	t.Helper()
	root := repoRoot(t)
	out := map[string]map[string]string{}
	for name, s := range p.Services {
		if s.Build == nil || filepath.Clean(s.Build.Context) != root || s.Build.Dockerfile != "deploy/Dockerfile" {
			continue
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		out[name] = env
	}
	return out
}

// hasSecretAt reports whether file is where one of s's secrets appears.
func hasSecretAt(s types.ServiceConfig, file string) bool {
	for _, sec := range s.Secrets {
		target := sec.Target
		if target == "" {
			target = "/run/secrets/" + sec.Source
		} else if !strings.HasPrefix(target, "/") {
			target = "/run/secrets/" + target
		}
		if target == file {
			return true
		}
	}
	return false
}

// checkEndpoint: the S3 endpoint names MinIO servers on their port.
func checkEndpoint(t *testing.T, p *types.Project, sidecar, endpoint string) {
	t.Helper()
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		t.Errorf("%s: MMSIDECAR_S3_ENDPOINT %q: %v", sidecar, endpoint, err)
		return
	}
	owners := hostsOf(p, host)
	if len(owners) == 0 {
		t.Errorf("%s: endpoint host %q is no service or alias", sidecar, host)
	}
	for _, o := range owners {
		s := p.Services[o]
		if !isMinioServer(s) {
			t.Errorf("%s: endpoint host %q reaches %s, which is not a MinIO server", sidecar, host, o)
			continue
		}
		addr := ":9000"
		for i, a := range s.Command {
			if a == "--address" && i+1 < len(s.Command) {
				addr = s.Command[i+1]
			}
		}
		if _, p, _ := net.SplitHostPort(addr); p != port {
			t.Errorf("%s: endpoint port %s, but %s listens on %s", sidecar, port, o, addr)
		}
	}
}

// checkPair: exactly one Mailman shares the sidecar's queue volume at the
// same path, waits for it, reaches it through DRAIN_HOOK_URL, runs the
// entry point wrapper, and may take long enough to stop for the drain.
func checkPair(t *testing.T, p *types.Project, sidecar string, env map[string]string, port int) {
	t.Helper()
	s := p.Services[sidecar]
	var qv types.ServiceVolumeConfig
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && strings.HasPrefix(env["MMSIDECAR_QUEUE_DIR"], strings.TrimSuffix(v.Target, "/")+"/") {
			qv = v
		}
	}
	if qv.Source == "" {
		t.Errorf("%s: no named volume holds %s", sidecar, env["MMSIDECAR_QUEUE_DIR"])
		return
	}
	var mailmen []string
	for name, o := range p.Services {
		if name == sidecar {
			continue
		}
		for _, v := range o.Volumes {
			if v.Source == qv.Source && v.Target == qv.Target && !strings.HasPrefix(v.Target, "/volumes/") {
				mailmen = append(mailmen, name)
			}
		}
	}
	if len(mailmen) != 1 {
		t.Errorf("%s: volume %s at %s is shared with %v, want exactly one Mailman", sidecar, qv.Source, qv.Target, mailmen)
		return
	}
	mm := p.Services[mailmen[0]]
	if _, ok := mm.DependsOn[sidecar]; !ok {
		t.Errorf("%s does not depend on its sidecar %s", mm.Name, sidecar)
	}
	checkComposePlugin(t, mm, env)
	hook := mm.Environment["DRAIN_HOOK_URL"]
	u, err := url.Parse(derefOr(hook, ""))
	if err != nil || u.Hostname() != sidecar || u.Port() != strconv.Itoa(port) {
		t.Errorf("%s: DRAIN_HOOK_URL %q, want http://%s:%d", mm.Name, derefOr(hook, ""), sidecar, port)
	}
	if len(mm.Entrypoint) < 2 || filepath.Base(mm.Entrypoint[1]) != "mailman-entrypoint.sh" {
		t.Errorf("%s: entrypoint %v does not run mailman-entrypoint.sh (readiness wait and drain)", mm.Name, mm.Entrypoint)
	} else if m, ok := composeMount(mm, mm.Entrypoint[1]); !ok || m.Source != repoPath(t, "deploy", "hooks") {
		t.Errorf("%s: %s is not mounted from deploy/hooks", mm.Name, mm.Entrypoint[1])
	}
	deadline, err := strconv.Atoi(derefOr(mm.Environment["DRAIN_HOOK_DEADLINE"], "300"))
	if err != nil {
		t.Errorf("%s: DRAIN_HOOK_DEADLINE: %v", mm.Name, err)
	}
	if mm.StopGracePeriod == nil || time.Duration(*mm.StopGracePeriod) < time.Duration(deadline+30)*time.Second {
		t.Errorf("%s: stop_grace_period must cover DRAIN_HOOK_DEADLINE (%d s) plus Mailman's stop", mm.Name, deadline)
	}
}

func composeMount(s types.ServiceConfig, file string) (types.ServiceVolumeConfig, bool) {
	for _, v := range s.Volumes {
		if strings.HasPrefix(file, strings.TrimSuffix(v.Target, "/")+"/") {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

func derefOr(p *string, def string) string {
	if p == nil {
		return def
	}
	return *p
}
