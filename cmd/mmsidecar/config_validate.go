package main

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// Timing bounds enforced by validate.
const (
	minLeaseTTL    = 300 * time.Millisecond
	maxConcurrency = 256
)

// validate fills computed defaults, resolves names and checks every rule,
// collecting all problems. Rules that involve a variable whose value
// could not be parsed are skipped: that variable's error says enough.
func (c *Config) validate() []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(c.checkNodeID())
	queueDirOK := c.checkQueueDir()
	add(queueDirOK)
	add(c.checkQueues())
	add(c.checkMode())
	if queueDirOK == nil {
		add(c.checkStateDir())
		add(c.resolveOwner())
	}
	accessOK := c.loadSecret("MMSIDECAR_S3_ACCESS_KEY", &c.S3AccessKey, c.S3AccessKeyFile)
	secretOK := c.loadSecret("MMSIDECAR_S3_SECRET_KEY", &c.S3SecretKey, c.S3SecretKeyFile)
	add(accessOK)
	add(secretOK)
	errs = append(errs, c.checkStore(accessOK == nil, secretOK == nil)...)
	errs = append(errs, c.checkTiming()...)
	errs = append(errs, c.checkTuning()...)
	errs = append(errs, c.checkHTTPAndLogs()...)
	return errs
}

// containerSigns are files whose presence says the process runs in a
// container (Docker, Podman). A variable of tests.
var containerSigns = []string{"/.dockerenv", "/run/.containerenv"}

// inContainer names the sign that the process runs in a container, or
// returns "" when there is none.
func inContainer(env map[string]string) string {
	for _, f := range containerSigns {
		if _, err := os.Stat(f); err == nil {
			return f
		}
	}
	if v := env["container"]; v != "" {
		return "container=" + v
	}
	if env["KUBERNETES_SERVICE_HOST"] != "" {
		return "KUBERNETES_SERVICE_HOST"
	}
	return ""
}

func (c *Config) checkNodeID() error {
	if c.NodeID == "" {
		if c.meta != nil && c.meta.inContainer != "" {
			host, _ := os.Hostname()
			return newConfigError("MMSIDECAR_NODE_ID", "", "must be set in a container (found %s): the host name %q is the container's and changes when it is recreated, and a new id would leave the old one's entries to be taken over by chance. Set a stable id: the pod name of a StatefulSet, or the Compose service name", c.meta.inContainer, host)
		}
		host, err := os.Hostname()
		if err != nil {
			return newConfigError("MMSIDECAR_NODE_ID", "", "the host name is unknown (%v): set it", err)
		}
		if !fence.ValidName(host) {
			return newConfigError("MMSIDECAR_NODE_ID", "", "the host name %q is not a valid node id (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit): set it", host)
		}
		c.NodeID = host
		return nil
	}
	if !fence.ValidName(c.NodeID) {
		return newConfigError("MMSIDECAR_NODE_ID", c.NodeID, "must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")
	}
	return nil
}

func (c *Config) checkQueueDir() error {
	abs, err := filepath.Abs(c.QueueDir)
	if err != nil {
		return newConfigError("MMSIDECAR_QUEUE_DIR", c.QueueDir, "cannot make the path absolute: %v", err)
	}
	fi, err := os.Stat(abs)
	switch {
	case err != nil:
		return newConfigError("MMSIDECAR_QUEUE_DIR", c.QueueDir, "must be Mailman's existing queue directory: %v", err)
	case !fi.IsDir():
		return newConfigError("MMSIDECAR_QUEUE_DIR", c.QueueDir, "is not a directory")
	}
	c.QueueDir = abs
	return nil
}

func (c *Config) checkQueues() error {
	raw := strings.Join(c.Queues, ",")
	var names []string
	for _, q := range c.Queues {
		q = strings.TrimSpace(q)
		if q == "" {
			continue
		}
		if !fence.ValidName(q) {
			return newConfigError("MMSIDECAR_QUEUES", raw, "queue name %q must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", q)
		}
		if slices.Contains(names, q) {
			return newConfigError("MMSIDECAR_QUEUES", raw, "queue %q is listed twice", q)
		}
		names = append(names, q)
	}
	c.Queues = names
	return nil
}

func (c *Config) checkMode() error {
	switch c.Mode {
	case ModeCluster, ModeMirror:
		return nil
	}
	return newConfigError("MMSIDECAR_MODE", string(c.Mode), "must be %q (several nodes coordinate through the store) or %q (single-node backup that never modifies Mailman's files)", ModeCluster, ModeMirror)
}

// checkStateDir defaults StateDir and, in cluster mode, checks that it
// is (or, not created yet, will be) on QueueDir's filesystem: holding an
// entry is a rename out of a queue directory, which cannot cross
// filesystems. It creates nothing (prepareStateDir does, for run).
func (c *Config) checkStateDir() error {
	const name = "MMSIDECAR_STATE_DIR"
	if c.StateDir == "" {
		c.StateDir = filepath.Join(c.QueueDir, ".mmsidecar")
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return newConfigError(name, c.StateDir, "cannot make the path absolute: %v", err)
	}
	c.StateDir = abs
	if c.Mode != ModeCluster {
		return nil
	}
	existing := abs
	for {
		if _, err := os.Stat(existing); err == nil || filepath.Dir(existing) == existing {
			break
		}
		existing = filepath.Dir(existing)
	}
	stateDev, err := deviceOf(existing)
	if err != nil {
		return newConfigError(name, abs, "%v", err)
	}
	queueDev, err := deviceOf(c.QueueDir)
	if err != nil {
		return newConfigError("MMSIDECAR_QUEUE_DIR", c.QueueDir, "%v", err)
	}
	if stateDev != queueDev {
		return newConfigError(name, abs, "must be on the same filesystem as MMSIDECAR_QUEUE_DIR (%s): held entries are moved there by rename, which cannot cross filesystems", c.QueueDir)
	}
	return nil
}

func deviceOf(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat: %w", err)
	}
	return uint64(st.Dev), nil //nolint:unconvert // Dev's type differs by platform
}

// resolveOwner sets FileUID and FileGID from FileOwner, or from QueueDir's
// owner when it is empty.
func (c *Config) resolveOwner() error {
	const name = "MMSIDECAR_FILE_OWNER"
	if c.FileOwner == "" {
		var st syscall.Stat_t
		if err := syscall.Stat(c.QueueDir, &st); err != nil {
			return newConfigError("MMSIDECAR_QUEUE_DIR", c.QueueDir, "stat: %v", err)
		}
		c.FileUID, c.FileGID = int(st.Uid), int(st.Gid)
		return nil
	}
	userPart, groupPart, hasGroup := strings.Cut(c.FileOwner, ":")
	uid, primaryGID, err := lookupUser(userPart)
	if err != nil {
		return newConfigError(name, c.FileOwner, "%v", err)
	}
	gid := primaryGID
	if hasGroup {
		if gid, err = lookupGroup(groupPart); err != nil {
			return newConfigError(name, c.FileOwner, "%v", err)
		}
	} else if gid < 0 {
		return newConfigError(name, c.FileOwner, "uid %d has no entry in the user database to take a group from: write uid:gid", uid)
	}
	c.FileUID, c.FileGID = uid, gid
	return nil
}

// lookupUser resolves a user name or number; primaryGID is -1 for a
// number the user database does not know.
func lookupUser(s string) (uid, primaryGID int, err error) {
	if s == "" {
		return 0, 0, fmt.Errorf("must be user[:group] or uid[:gid]")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, 0, fmt.Errorf("uid %d is negative", n)
		}
		u, err := user.LookupId(s)
		if err != nil {
			return n, -1, nil
		}
		gid, err := strconv.Atoi(u.Gid)
		if err != nil {
			return n, -1, nil
		}
		return n, gid, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, 0, fmt.Errorf("unknown user %q", s)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q has non-numeric uid %q", s, u.Uid)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q has non-numeric gid %q", s, u.Gid)
	}
	return uid, gid, nil
}

// lookupGroup resolves a group name or number.
func lookupGroup(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("gid %d is negative", n)
		}
		return n, nil
	}
	if s == "" {
		return 0, fmt.Errorf("empty group after ':'")
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("unknown group %q", s)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q has non-numeric gid %q", s, g.Gid)
	}
	return gid, nil
}

// loadSecret reads a secret from its _FILE variant when that is set.
func (c *Config) loadSecret(name string, dst *Secret, file string) error {
	fileVar := name + "_FILE"
	if file == "" {
		return nil
	}
	if *dst != "" {
		return newConfigError(name, string(*dst), "both %s and %s are set: set only one", name, fileVar)
	}
	s, err := readSecretFile(fileVar, file)
	if err != nil {
		return err
	}
	*dst = s
	if c.meta != nil {
		if c.meta.secretFile == nil {
			c.meta.secretFile = map[string]string{}
		}
		c.meta.secretFile[name] = fileVar
	}
	return nil
}

// readSecretFile reads the secret in file, named by the variable
// fileVar, without one trailing newline.
func readSecretFile(fileVar, file string) (Secret, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", newConfigError(fileVar, file, "cannot read the file: %v", err)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if s == "" {
		return "", newConfigError(fileVar, file, "the file is empty")
	}
	return Secret(s), nil
}

// loadAdminToken reads MMSIDECAR_ADMIN_TOKEN_FILE, for the commands that
// need the secret (run, drain); the others never read it, so that a user
// who may not read it can still run status.
func (c *Config) loadAdminToken() error {
	if c.AdminTokenFile == "" {
		return nil
	}
	tok, err := readSecretFile("MMSIDECAR_ADMIN_TOKEN_FILE", c.AdminTokenFile)
	if err != nil {
		return err
	}
	if len(tok) < 16 {
		return newConfigError("MMSIDECAR_ADMIN_TOKEN_FILE", c.AdminTokenFile, "the secret is %d characters long: use at least 16 (e.g. head -c 32 /dev/urandom | base64)", len(tok))
	}
	c.AdminToken = tok
	return nil
}

// checkStore validates the S3 settings when an endpoint is set, the
// embedded store's directory otherwise, and the prefix for both. A
// credential whose _FILE could not be read is not reported missing too.
func (c *Config) checkStore(accessRead, secretRead bool) []error {
	var errs []error
	if err := checkPrefix(c.S3Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.S3Endpoint == "" {
		abs, err := filepath.Abs(c.StoreDir)
		if err != nil {
			return append(errs, newConfigError("MMSIDECAR_STORE_DIR", c.StoreDir, "cannot make the path absolute: %v", err))
		}
		c.StoreDir = abs
		return errs
	}
	if err := c.normalizeEndpoint(); err != nil {
		errs = append(errs, err)
	}
	if !validBucket(c.S3Bucket) {
		errs = append(errs, newConfigError("MMSIDECAR_S3_BUCKET", c.S3Bucket, "must be 3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit"))
	}
	if c.S3AccessKey == "" && accessRead {
		errs = append(errs, newConfigError("MMSIDECAR_S3_ACCESS_KEY", "", "it (or MMSIDECAR_S3_ACCESS_KEY_FILE) is needed with MMSIDECAR_S3_ENDPOINT=%s", c.S3Endpoint))
	}
	if c.S3SecretKey == "" && secretRead {
		errs = append(errs, newConfigError("MMSIDECAR_S3_SECRET_KEY", "", "it (or MMSIDECAR_S3_SECRET_KEY_FILE) is needed with MMSIDECAR_S3_ENDPOINT=%s", c.S3Endpoint))
	}
	if c.S3CAFile != "" {
		if !c.S3TLS {
			errs = append(errs, newConfigError("MMSIDECAR_S3_CA_FILE", c.S3CAFile, "is set but the endpoint is plain HTTP: set MMSIDECAR_S3_TLS=true or an https:// endpoint"))
		} else if pem, err := os.ReadFile(c.S3CAFile); err != nil {
			errs = append(errs, newConfigError("MMSIDECAR_S3_CA_FILE", c.S3CAFile, "cannot read the file: %v", err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			errs = append(errs, newConfigError("MMSIDECAR_S3_CA_FILE", c.S3CAFile, "holds no PEM certificate"))
		}
	}
	if c.S3RequestTimeout <= 0 && !c.isBad("MMSIDECAR_S3_REQUEST_TIMEOUT") {
		errs = append(errs, newConfigError("MMSIDECAR_S3_REQUEST_TIMEOUT", c.S3RequestTimeout.String(), "must be greater than zero"))
	}
	return errs
}

// normalizeEndpoint turns an http:// or https:// endpoint into host:port
// and sets S3TLS from its scheme; MMSIDECAR_S3_TLS set against the scheme
// is an error.
func (c *Config) normalizeEndpoint() error {
	const name = "MMSIDECAR_S3_ENDPOINT"
	raw := c.S3Endpoint
	hostPort := raw
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return newConfigError(name, raw, "is neither host:port nor a URL: %v", err)
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			return newConfigError(name, raw, "scheme %q: use http://, https:// or host:port", u.Scheme)
		case u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
			return newConfigError(name, raw, "must be only the server: scheme, host and port (the bucket goes in MMSIDECAR_S3_BUCKET)")
		}
		tls := u.Scheme == "https"
		if c.isSet("MMSIDECAR_S3_TLS") && !c.isBad("MMSIDECAR_S3_TLS") && c.S3TLS != tls {
			return newConfigError("MMSIDECAR_S3_TLS", strconv.FormatBool(c.S3TLS), "contradicts MMSIDECAR_S3_ENDPOINT=%s: the scheme says TLS %v; drop one of them", raw, tls)
		}
		c.S3TLS = tls
		hostPort = u.Host
		if u.Port() == "" {
			hostPort = net.JoinHostPort(u.Hostname(), map[bool]string{true: "443", false: "80"}[tls])
		}
	}
	if err := checkHostPort(hostPort); err != nil {
		return newConfigError(name, raw, "must be host:port, http://host:port or https://host:port: %v", err)
	}
	c.S3Endpoint = hostPort
	return nil
}

func checkPrefix(p string) error {
	trimmed := strings.Trim(p, "/")
	if trimmed == "" {
		return nil
	}
	for seg := range strings.SplitSeq(trimmed, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return newConfigError("MMSIDECAR_S3_PREFIX", p, "must not contain empty, \".\" or \"..\" path segments")
		}
	}
	return nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for i := 0; i < len(b); i++ {
		ch := b[i]
		alnum := 'a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9'
		if !alnum && (i == 0 || i == len(b)-1 || ch != '.' && ch != '-') {
			return false
		}
	}
	return true
}

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

// checkTiming enforces the lease timing rules of SPEC §5.
func (c *Config) checkTiming() []error {
	var errs []error
	if c.isBad("MMSIDECAR_LEASE_TTL") || c.isBad("MMSIDECAR_LEASE_GRACE") || c.isBad("MMSIDECAR_LEASE_MARGIN") {
		return nil // the unparsable one is reported; rules between them would mislead
	}
	ttl, grace, margin := c.LeaseTTL, c.LeaseGrace, c.LeaseMargin
	if ttl < minLeaseTTL {
		errs = append(errs, newConfigError("MMSIDECAR_LEASE_TTL", ttl.String(), "must be at least %s", minLeaseTTL))
	}
	switch {
	case margin <= 0:
		errs = append(errs, newConfigError("MMSIDECAR_LEASE_MARGIN", margin.String(),
			"must be greater than zero: a node fences itself at TTL - margin, before any peer may judge its lease dead"))
	case margin >= ttl/2:
		errs = append(errs, newConfigError("MMSIDECAR_LEASE_MARGIN", margin.String(),
			"must be less than half of MMSIDECAR_LEASE_TTL (%s, so under %s): a node renews every TTL/3 and fences itself at TTL - margin, so a larger margin fences it after one slow renewal", ttl, ttl/2))
	}
	if grace < margin {
		errs = append(errs, newConfigError("MMSIDECAR_LEASE_GRACE", grace.String(),
			"must be at least MMSIDECAR_LEASE_MARGIN (%s): peers take over at TTL + grace by their own clocks, and grace >= margin keeps that well after the holder has fenced itself at TTL - margin", margin))
	}
	return errs
}

// checkTuning checks the counts and intervals.
func (c *Config) checkTuning() []error {
	var errs []error
	if c.MaxTransfers < 1 {
		errs = append(errs, newConfigError("MMSIDECAR_MAX_TRANSFERS", strconv.Itoa(c.MaxTransfers), "must be at least 1"))
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"MMSIDECAR_UPLOAD_CONCURRENCY", c.UploadConcurrency}, {"MMSIDECAR_TAKEOVER_CONCURRENCY", c.TakeoverConcurrency}} {
		if v.n < 1 || v.n > maxConcurrency {
			errs = append(errs, newConfigError(v.name, strconv.Itoa(v.n), "must be between 1 and %d", maxConcurrency))
		}
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"MMSIDECAR_RESCAN_INTERVAL", c.RescanInterval},
		{"MMSIDECAR_SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
		{"MMSIDECAR_DRAIN_TIMEOUT", c.DrainTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			errs = append(errs, newConfigError(p.name, p.d.String(), "must be greater than zero"))
		}
	}
	if c.DeleteBatchDelay < 0 {
		errs = append(errs, newConfigError("MMSIDECAR_DELETE_BATCH_DELAY", c.DeleteBatchDelay.String(), "must not be negative (0 deletes at once)"))
	}
	return errs
}

func (c *Config) checkHTTPAndLogs() []error {
	var errs []error
	if err := checkHostPort(c.ListenAddr); err != nil {
		errs = append(errs, newConfigError("MMSIDECAR_LISTEN_ADDR", c.ListenAddr, "must be host:port, e.g. 127.0.0.1:9464: %v", err))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, newConfigError("MMSIDECAR_LOG_LEVEL", c.LogLevel, "must be debug, info, warn or error"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, newConfigError("MMSIDECAR_LOG_FORMAT", c.LogFormat, "must be text or json"))
	}
	return errs
}

// QueueNames returns the queues to mirror: Queues when set, otherwise
// every directory under QueueDir whose name is a valid queue name (so not
// the .mmsidecar state directory), sorted. Mailman creates its queue
// directories when its runners start, so callers list again on rescans.
func (c *Config) QueueNames() ([]string, error) {
	if len(c.Queues) > 0 {
		return slices.Clone(c.Queues), nil
	}
	ents, err := os.ReadDir(c.QueueDir)
	if err != nil {
		return nil, fmt.Errorf("list queue dir: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && fence.ValidName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
