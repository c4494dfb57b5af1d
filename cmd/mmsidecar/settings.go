package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
)

// setting documents one MMSIDECAR_ variable. The table below is the one
// place a variable is described: .env.example is generated from it
// (`mmsidecar config -env-example`, checked by TestEnvExample) and
// `mmsidecar config` prints it with the effective values. A variable's
// default is not written here: it is the env tag's default= in Config.
//
// To add a variable: add the Config field with its env tag, add its entry
// here in the place it should appear, validate it in config_validate.go,
// and regenerate .env.example.
type setting struct {
	// Name is the variable, e.g. MMSIDECAR_LEASE_TTL.
	Name string
	// Section, when set, starts a new section of .env.example before this
	// variable; SectionNote is printed under its title.
	Section, SectionNote string
	// Computed says what the default is when the env tag has none, e.g.
	// "the host name"; empty for a variable that is simply unset.
	Computed string
	// Doc is the meaning, in plain sentences; wrapped when printed.
	Doc string
}

// settingsTable lists every variable in .env.example's order.
var settingsTable = []setting{
	{Name: "MMSIDECAR_NODE_ID", Section: "Identity and paths", Computed: "the host name, outside a container",
		Doc: "This node's id in the store: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit. Each node of a cluster needs its own, stable across restarts: the state directory records it, and a sidecar refuses to start on a disk that belongs to another id. In a container it must be set (a container's host name changes when it is recreated): the pod name of a StatefulSet, or the Compose service name."},
	{Name: "MMSIDECAR_QUEUE_DIR",
		Doc: "Mailman's queue root: its subdirectories (in, pipeline, out, ...) are the queues. Must exist. Mailman 3 on Debian: /var/lib/mailman3/queue."},
	{Name: "MMSIDECAR_QUEUES", Computed: "every queue directory present under MMSIDECAR_QUEUE_DIR",
		Doc: "Queues to mirror, comma-separated (e.g. in,pipeline,out)."},
	{Name: "MMSIDECAR_STATE_DIR", Computed: "MMSIDECAR_QUEUE_DIR/.mmsidecar (Mailman ignores it)",
		Doc: "The sidecar's local state: the hold area of a fenced or draining node, the disk's node id and the highest lease epoch tried (a restart never reuses one). Must be on the same filesystem as MMSIDECAR_QUEUE_DIR, because entries are moved there by rename. Created by `mmsidecar run` (only), owned by the user it runs as."},
	{Name: "MMSIDECAR_MODE",
		Doc: "cluster: several nodes share the store; entries of a dead node are taken over and restored into the survivors' queue directories. mirror: single-node backup: queue files are mirrored into the store and Mailman's files are never modified."},
	{Name: "MMSIDECAR_FILE_OWNER", Computed: "the owner and group of MMSIDECAR_QUEUE_DIR (list:list on Debian)",
		Doc: "Owner of files the sidecar writes into the queue directories (restored entries, mode 0660): user[:group] names or uid[:gid] numbers."},

	{Name: "MMSIDECAR_S3_ENDPOINT", Section: "Store", Computed: "the embedded directory store in MMSIDECAR_STORE_DIR, which only this host can see",
		Doc: "S3-compatible endpoint: host:port (e.g. 127.0.0.1:9000), or a URL http://host:port or https://host:port whose scheme sets MMSIDECAR_S3_TLS. MinIO must be a single server pool at a release with the conditional-write quorum fix; `mmsidecar check` probes it. A cluster needs it: without it the nodes of a cluster cannot see each other."},
	{Name: "MMSIDECAR_S3_BUCKET",
		Doc: "Bucket, which must exist."},
	{Name: "MMSIDECAR_S3_PREFIX",
		Doc: "Key prefix of every object the sidecar writes; also used with the embedded store. \"/\" means the bucket root."},
	{Name: "MMSIDECAR_S3_REGION",
		Doc: "Region signed into requests."},
	{Name: "MMSIDECAR_S3_ACCESS_KEY",
		Doc: "Access key, required with MMSIDECAR_S3_ENDPOINT. Set it or MMSIDECAR_S3_ACCESS_KEY_FILE, not both."},
	{Name: "MMSIDECAR_S3_ACCESS_KEY_FILE",
		Doc: "File holding the access key (Docker, Kubernetes and systemd credentials); one trailing newline is dropped."},
	{Name: "MMSIDECAR_S3_SECRET_KEY",
		Doc: "Secret key, required with MMSIDECAR_S3_ENDPOINT. Set it or MMSIDECAR_S3_SECRET_KEY_FILE, not both."},
	{Name: "MMSIDECAR_S3_SECRET_KEY_FILE",
		Doc: "File holding the secret key; one trailing newline is dropped."},
	{Name: "MMSIDECAR_S3_TLS", Computed: "true for an https:// endpoint, false otherwise",
		Doc: "Speak HTTPS to the endpoint. Setting it against the endpoint's scheme is an error."},
	{Name: "MMSIDECAR_S3_CA_FILE",
		Doc: "PEM file of CAs to trust in addition to the system's (needs TLS)."},
	{Name: "MMSIDECAR_S3_REQUEST_TIMEOUT",
		Doc: "Longest time one store request may go without progress. Keep it well below the lease TTL."},
	{Name: "MMSIDECAR_STORE_DIR",
		Doc: "The embedded directory store, used when MMSIDECAR_S3_ENDPOINT is empty: for trying the sidecar out, or mirror mode on one host. Only this host sees it, so cluster mode on it coordinates with nobody. Refused on NFS or CIFS."},

	{Name: "MMSIDECAR_LEASE_TTL", Section: "Timing (cluster mode)", SectionNote: "Rules, checked at start: TTL >= 300ms, 0 < MARGIN < TTL/2, GRACE >= MARGIN.",
		Doc: "A node renews its lease every TTL/3. Peers declare it dead when its lease has not changed for TTL + GRACE by their own clocks, and take over its entries. The node itself fences (holds its entries) when TTL - MARGIN has passed since the start of its last successful renewal. A node or VM frozen for longer than MARGIN + GRACE can run an entry a peer took over."},
	{Name: "MMSIDECAR_LEASE_GRACE",
		Doc: "Added to the TTL before peers declare a silent node dead."},
	{Name: "MMSIDECAR_LEASE_MARGIN",
		Doc: "How long before the TTL a node that could not renew fences itself."},
	{Name: "MMSIDECAR_RESCAN_INTERVAL",
		Doc: "Full rescan of the queue directories, in addition to file notifications."},
	{Name: "MMSIDECAR_DELETE_BATCH_DELAY",
		Doc: "How long deletes of finished entries are collected into one batch request. 0 deletes at once."},
	{Name: "MMSIDECAR_SHUTDOWN_TIMEOUT",
		Doc: "How long the first SIGTERM waits for in-flight uploads before the node fences and exits (a second SIGTERM cuts it short). A SIGTERM during the start-up stops the sidecar at once."},
	{Name: "MMSIDECAR_DRAIN_TIMEOUT",
		Doc: "Longest `mmsidecar drain` waits for the backlog to move and in-flight entries to finish."},

	{Name: "MMSIDECAR_MAX_TRANSFERS", Section: "Tuning and safety",
		Doc: "An entry moved between nodes more often than this is preserved in Mailman's bad queue as .psv instead of being run again (at least 1)."},
	{Name: "MMSIDECAR_UPLOAD_CONCURRENCY",
		Doc: "Concurrent store uploads (1-256)."},
	{Name: "MMSIDECAR_TAKEOVER_CONCURRENCY",
		Doc: "Entries a takeover of a dead node's backlog (or a settle after a fence) restores at once, per node (1-256). Each costs three store requests; a store with spare CPU restores faster with more."},
	{Name: "MMSIDECAR_ALLOW_UNSAFE_STORE",
		Doc: "Run even when the start-up probe finds that the store does not honour conditional writes. DANGEROUS: two nodes may then process the same message. Logged loudly at every start."},
	{Name: "MMSIDECAR_RUNNER_GATE",
		Doc: "The runner gate is the fence: every Mailman runner on this node has the mailman_mmsidecar plugin (deploy/mailman/) and checks the gate record before each dequeue. A fence or a stop then closes the gate and leaves entries in the queue directories, and a node declared dead never touches a .bak. The gate record is published in the state directory either way; set this only once `mmsidecar status` counts every queue runner as honouring the gate (docs/gate.md)."},

	{Name: "MMSIDECAR_LISTEN_ADDR", Section: "HTTP and logging",
		Doc: "Listener for /healthz, /readyz, /metrics, the cluster page at /, and the drain and status endpoints that `mmsidecar drain`, `status` and `health` talk to. It opens before the store is reached, so that probes and Prometheus get answers during the start-up."},
	{Name: "MMSIDECAR_ADMIN_TOKEN_FILE",
		Doc: "File holding the secret that state-changing requests (POST /drain, POST /drain/cancel) must carry as \"Authorization: Bearer <secret>\"; `mmsidecar drain` reads it from here. Unset: those requests are refused. Read-only endpoints stay open for probes and Prometheus."},
	{Name: "MMSIDECAR_LOG_LEVEL",
		Doc: "Log level: debug, info, warn or error (to stderr)."},
	{Name: "MMSIDECAR_LOG_FORMAT",
		Doc: "Log format: text or json."},
}

// settingInfo is a setting with what Config's env tag says about it.
type settingInfo struct {
	setting
	// Default is the env tag's default ("" when there is none).
	Default string
	// Field is the Config field's name.
	Field string
}

// settings returns the table joined with Config's env tags. It panics
// when the two disagree (TestSettingsMatchConfig makes that a test
// failure rather than a surprise).
func settings() []settingInfo {
	fields := map[string]reflect.StructField{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if name, _ := envTag(t.Field(i)); name != "" {
			fields[name] = t.Field(i)
		}
	}
	out := make([]settingInfo, 0, len(settingsTable))
	for _, s := range settingsTable {
		f, ok := fields[s.Name]
		if !ok {
			panic(fmt.Sprintf("settings: %s has no Config field", s.Name))
		}
		_, def := envTag(f)
		out = append(out, settingInfo{setting: s, Default: def, Field: f.Name})
		delete(fields, s.Name)
	}
	for name := range fields {
		panic(fmt.Sprintf("settings: Config reads %s, which the table does not document", name))
	}
	return out
}

// knownSetting reports whether name is a variable the sidecar reads.
func knownSetting(name string) bool {
	for _, s := range settingsTable {
		if s.Name == name {
			return true
		}
	}
	return false
}

// closestSetting returns the known variable nearest to name by edit
// distance, when it is near enough to be a likely misspelling.
func closestSetting(name string) (string, bool) {
	best, bestDist := "", -1
	for _, s := range settingsTable {
		if d := editDistance(name, s.Name); bestDist < 0 || d < bestDist {
			best, bestDist = s.Name, d
		}
	}
	// The shared prefix makes every name close to every other: count only
	// what differs after it.
	tail := len(strings.TrimPrefix(name, envPrefix))
	return best, bestDist <= max(2, tail/3)
}

// editDistance is the Levenshtein distance of a and b (ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envPrefix starts every variable the sidecar reads.
const envPrefix = "MMSIDECAR_"

// envExampleHeader opens .env.example.
const envExampleHeader = `# mmsidecar configuration. Every variable is optional; the value shown is
# the default. Lines left commented out have no fixed default (what they
# default to is said above them). An empty value means the default.
# Durations use Go syntax: 500ms, 10s, 1m30s, 10m.
# ` + "`mmsidecar config`" + ` prints every variable with its meaning and the value in
# effect; ` + "`mmsidecar check`" + ` validates the configuration and probes the store.
#
# Generated by ` + "`mmsidecar config -env-example`" + ` from cmd/mmsidecar/settings.go:
# edit the table there, not this file.
`

// writeEnvExample writes .env.example from the table.
func writeEnvExample(w io.Writer) error {
	var b strings.Builder
	b.WriteString(envExampleHeader)
	rule := "# " + strings.Repeat("-", 75) + "\n"
	for _, s := range settings() {
		if s.Section != "" {
			b.WriteString("\n" + rule + "# " + s.Section + "\n")
			if s.SectionNote != "" {
				b.WriteString(wrap(s.SectionNote, "# ", 78))
			}
			b.WriteString(rule)
		}
		b.WriteString("\n")
		b.WriteString(wrap(s.Doc, "# ", 78))
		if s.Default == "" {
			if s.Computed != "" {
				b.WriteString(wrap("Default: "+s.Computed+".", "# ", 78))
			}
			b.WriteString("# " + s.Name + "=\n")
			continue
		}
		b.WriteString(s.Name + "=" + s.Default + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// wrap fills text into lines of at most width columns, each starting
// with prefix.
func wrap(text, prefix string, width int) string {
	var b strings.Builder
	line := prefix
	for _, word := range strings.Fields(text) {
		if line != prefix && len(line)+1+len(word) > width {
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			line = prefix
		}
		if line != prefix {
			line += " "
		}
		line += word
	}
	if line != prefix {
		b.WriteString(line + "\n")
	}
	return b.String()
}
