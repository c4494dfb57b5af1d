package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"
)

// Mode says how the sidecar treats Mailman's queue files.
type Mode string

// The modes.
const (
	// ModeCluster coordinates several nodes: it claims, takes over,
	// restores and quarantines entries, so it writes into the queue
	// directories.
	ModeCluster Mode = "cluster"
	// ModeMirror is a single-node backup: it mirrors the queue directories
	// into the store and never modifies Mailman's files.
	ModeMirror Mode = "mirror"
)

// Secret is a credential. It prints, logs and marshals as "(redacted)";
// Reveal returns the value.
type Secret string

const redacted = "(redacted)"

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// String hides the value from fmt.
func (s Secret) String() string { return redacted }

// GoString hides the value from %#v.
func (s Secret) GoString() string { return redacted }

// LogValue hides the value from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText hides the value from encoders.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Config is the sidecar's configuration, read from MMSIDECAR_* environment
// variables (see .env.example) and validated by LoadConfig. Fields without
// an env tag are derived during validation.
type Config struct {
	// NodeID names this node in the store; default the host name.
	NodeID string `env:"MMSIDECAR_NODE_ID"`
	// QueueDir is Mailman's queue root, whose subdirectories are the queues.
	QueueDir string `env:"MMSIDECAR_QUEUE_DIR, default=/var/lib/mailman3/queue"`
	// Queues lists the queues to mirror; empty means every queue directory
	// present under QueueDir (see Config.QueueNames).
	Queues []string `env:"MMSIDECAR_QUEUES"`
	// StateDir holds the sidecar's local state, including quarantine; on
	// the same filesystem as QueueDir. Default QueueDir/.mmsidecar.
	StateDir string `env:"MMSIDECAR_STATE_DIR"`
	// Mode is cluster or mirror.
	Mode Mode `env:"MMSIDECAR_MODE, default=cluster"`
	// FileOwner is "user[:group]" or "uid[:gid]" for files the sidecar
	// creates in the queue directories; empty means QueueDir's owner.
	FileOwner string `env:"MMSIDECAR_FILE_OWNER"`
	// FileUID is the resolved owner of files the sidecar creates.
	FileUID int
	// FileGID is the resolved group of files the sidecar creates.
	FileGID int

	// S3Endpoint is the S3 server's host:port; empty means the embedded
	// directory store in StoreDir.
	S3Endpoint string `env:"MMSIDECAR_S3_ENDPOINT"`
	// S3Bucket is the bucket, which must exist.
	S3Bucket string `env:"MMSIDECAR_S3_BUCKET, default=mmsidecar"`
	// S3Prefix is the key prefix of every object the sidecar writes; also
	// used with the embedded store. "/" means the bucket's root.
	S3Prefix string `env:"MMSIDECAR_S3_PREFIX, default=mmsidecar"`
	// S3Region is the bucket's region.
	S3Region string `env:"MMSIDECAR_S3_REGION, default=us-east-1"`
	// S3AccessKey is the access key, from the variable or from the file
	// S3AccessKeyFile names.
	S3AccessKey Secret `env:"MMSIDECAR_S3_ACCESS_KEY"`
	// S3AccessKeyFile names a file holding the access key.
	S3AccessKeyFile string `env:"MMSIDECAR_S3_ACCESS_KEY_FILE"`
	// S3SecretKey is the secret key, from the variable or from the file
	// S3SecretKeyFile names.
	S3SecretKey Secret `env:"MMSIDECAR_S3_SECRET_KEY"`
	// S3SecretKeyFile names a file holding the secret key.
	S3SecretKeyFile string `env:"MMSIDECAR_S3_SECRET_KEY_FILE"`
	// S3TLS connects with HTTPS; an https:// endpoint sets it.
	S3TLS bool `env:"MMSIDECAR_S3_TLS"`
	// S3CAFile is a PEM bundle of CAs to trust besides the system's.
	S3CAFile string `env:"MMSIDECAR_S3_CA_FILE"`
	// S3RequestTimeout bounds each store request.
	S3RequestTimeout time.Duration `env:"MMSIDECAR_S3_REQUEST_TIMEOUT, default=10s"`
	// StoreDir is the embedded directory store, used when S3Endpoint is
	// empty.
	StoreDir string `env:"MMSIDECAR_STORE_DIR, default=/var/lib/mmsidecar/store"`

	// LeaseTTL is how long a lease lives without renewal.
	LeaseTTL time.Duration `env:"MMSIDECAR_LEASE_TTL, default=15s"`
	// LeaseGrace is how long past the TTL peers wait before a takeover.
	LeaseGrace time.Duration `env:"MMSIDECAR_LEASE_GRACE, default=5s"`
	// LeaseMargin is how long before the TTL the holder fences itself.
	LeaseMargin time.Duration `env:"MMSIDECAR_LEASE_MARGIN, default=3s"`
	// RescanInterval is the period of full rescans of the queues.
	RescanInterval time.Duration `env:"MMSIDECAR_RESCAN_INTERVAL, default=60s"`
	// DeleteBatchDelay is the shortest time between two requests that
	// delete finished entries' copies (0: none).
	DeleteBatchDelay time.Duration `env:"MMSIDECAR_DELETE_BATCH_DELAY, default=100ms"`
	// ShutdownTimeout is how long the first SIGTERM waits for in-flight
	// uploads.
	ShutdownTimeout time.Duration `env:"MMSIDECAR_SHUTDOWN_TIMEOUT, default=10s"`
	// DrainTimeout bounds `mmsidecar drain`.
	DrainTimeout time.Duration `env:"MMSIDECAR_DRAIN_TIMEOUT, default=10m"`

	// MaxTransfers is how often an entry may change node before it is
	// preserved in bad as .psv.
	MaxTransfers int `env:"MMSIDECAR_MAX_TRANSFERS, default=3"`
	// UploadConcurrency is the number of concurrent store writes.
	UploadConcurrency int `env:"MMSIDECAR_UPLOAD_CONCURRENCY, default=16"`
	// TakeoverConcurrency is the number of entries a takeover (or a
	// settle) restores at once.
	TakeoverConcurrency int `env:"MMSIDECAR_TAKEOVER_CONCURRENCY, default=16"`
	// AllowUnsafeStore runs even when the start-up probe finds the store
	// unsafe.
	AllowUnsafeStore bool `env:"MMSIDECAR_ALLOW_UNSAFE_STORE, default=false"`
	// RunnerGate makes the runner gate the fence: Mailman's runners honour
	// it through the plugin (docs/gate.md), so fences and stops close the
	// gate and leave entries where they are.
	RunnerGate bool `env:"MMSIDECAR_RUNNER_GATE, default=false"`

	// ListenAddr is the HTTP listener (health, metrics, drain, status).
	ListenAddr string `env:"MMSIDECAR_LISTEN_ADDR, default=127.0.0.1:9464"`
	// AdminTokenFile names the file holding AdminToken.
	AdminTokenFile string `env:"MMSIDECAR_ADMIN_TOKEN_FILE"`
	// AdminToken is the secret state-changing HTTP requests must carry;
	// empty refuses them all.
	AdminToken Secret
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"MMSIDECAR_LOG_LEVEL, default=info"`
	// LogFormat is text or json.
	LogFormat string `env:"MMSIDECAR_LOG_FORMAT, default=text"`

	// meta is where the values came from (LoadConfig).
	meta *configMeta
}

// ConfigError is a configuration problem: Var is the variable, Value its
// value (redacted for secrets), Reason what is wrong.
type ConfigError struct {
	// Var is the environment variable, e.g. MMSIDECAR_LEASE_TTL.
	Var string
	// Value is the variable's value, or "(redacted)" for a secret.
	Value string
	// Reason says what is wrong and what would be right.
	Reason string
}

// Error formats the error as `VAR="value": reason`, never showing a
// secret.
func (e *ConfigError) Error() string {
	switch {
	case e.Var == "":
		return e.Reason
	case e.Value == "":
		return fmt.Sprintf("%s is not set: %s", e.Var, e.Reason)
	}
	v := e.Value
	if isSecretVar(e.Var) {
		v = redacted
	}
	return fmt.Sprintf("%s=%q: %s", e.Var, v, e.Reason)
}

// isSecretVar reports whether the variable holds a credential.
func isSecretVar(name string) bool {
	return strings.HasSuffix(name, "_SECRET_KEY") || strings.HasSuffix(name, "_ACCESS_KEY")
}

// newConfigError builds a ConfigError, redacting the value of a secret
// already here so that no copy of it travels with the error. An empty
// value means the variable is not set, and is shown so.
func newConfigError(name, value, format string, args ...any) *ConfigError {
	if isSecretVar(name) && value != "" {
		value = redacted
	}
	return &ConfigError{Var: name, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// LoadConfig reads the configuration from env (nil means the process
// environment), fills computed defaults and validates it. An empty
// variable counts as unset; a MMSIDECAR_ variable the sidecar does not
// read is an error. Every problem is a *ConfigError, each reported once;
// when there are several they are joined (errors.As finds the first).
// It creates nothing: `run` creates the state directory (prepareStateDir).
// On error the returned Config holds what could be read, for `config`.
func LoadConfig(ctx context.Context, env map[string]string) (*Config, error) {
	if env == nil {
		env = processEnv()
	}
	l := emptyIsUnset{envconfig.MapLookuper(env)}
	c := &Config{meta: &configMeta{set: map[string]bool{}, bad: map[string]bool{}, inContainer: inContainer(env)}}
	var errs []error
	for name, v := range env {
		if strings.HasPrefix(name, envPrefix) && v != "" {
			c.meta.set[name] = true
		}
		if strings.HasPrefix(name, envPrefix) && !knownSetting(name) {
			errs = append(errs, unknownVariable(name, v))
		}
	}
	// Decode each variable on its own, so that every bad value is
	// reported and not only the first; then decode with the bad ones
	// hidden (they take their defaults, and validate skips the rules that
	// involve them).
	for _, s := range settings() {
		var one Config
		if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &one, Lookuper: onlyOne{l, s.Name}}); err != nil {
			errs = append(errs, decodeError(err, l))
			c.meta.bad[s.Name] = true
		}
	}
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: c, Lookuper: hiding{l, c.meta.bad}}); err != nil {
		return c, &ConfigError{Reason: fmt.Sprintf("read configuration: %v", err)}
	}
	errs = append(errs, c.validate()...)
	slices.SortStableFunc(errs, func(a, b error) int { return strings.Compare(errVar(a), errVar(b)) })
	return c, errJoin(errs)
}

// configMeta is what LoadConfig learnt besides the values: which
// variables were set, which could not be parsed, and where secrets came
// from.
type configMeta struct {
	set, bad map[string]bool
	// secretFile maps a secret variable to the _FILE variable it was read
	// through.
	secretFile map[string]string
	// inContainer names the sign that the sidecar runs in a container.
	inContainer string
}

// isSet reports whether the variable was given (not empty).
func (c *Config) isSet(name string) bool { return c.meta != nil && c.meta.set[name] }

// isBad reports whether the variable's value could not be parsed.
func (c *Config) isBad(name string) bool { return c.meta != nil && c.meta.bad[name] }

// processEnv returns the process environment as a map.
func processEnv() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// unknownVariable is the error for a MMSIDECAR_ variable nothing reads:
// most likely a misspelling, which would otherwise silently leave the
// real variable at its default.
func unknownVariable(name, value string) *ConfigError {
	if best, ok := closestSetting(name); ok {
		return newConfigError(name, value, "is not a variable mmsidecar reads: did you mean %s? (`mmsidecar config` lists them all)", best)
	}
	return newConfigError(name, value, "is not a variable mmsidecar reads (`mmsidecar config` lists them all)")
}

// errVar is the variable a ConfigError names, for sorting.
func errVar(err error) string {
	var ce *ConfigError
	if errors.As(err, &ce) {
		return ce.Var
	}
	return ""
}

// emptyIsUnset makes an empty variable count as unset, so that "X=" in an
// env file means the default.
type emptyIsUnset struct{ l envconfig.Lookuper }

// Lookup implements envconfig.Lookuper.
func (e emptyIsUnset) Lookup(key string) (string, bool) {
	v, ok := e.l.Lookup(key)
	if v == "" {
		return "", false
	}
	return v, ok
}

// onlyOne shows one variable and hides the rest.
type onlyOne struct {
	l    envconfig.Lookuper
	name string
}

// Lookup implements envconfig.Lookuper.
func (o onlyOne) Lookup(key string) (string, bool) {
	if key != o.name {
		return "", false
	}
	return o.l.Lookup(key)
}

// hiding hides the variables in hide.
type hiding struct {
	l    envconfig.Lookuper
	hide map[string]bool
}

// Lookup implements envconfig.Lookuper.
func (h hiding) Lookup(key string) (string, bool) {
	if h.hide[key] {
		return "", false
	}
	return h.l.Lookup(key)
}

// decodeError turns envconfig's "Field: cause" into a ConfigError naming
// the variable, its value and the expected syntax, without envconfig's
// own text (which quotes the value).
func decodeError(err error, l envconfig.Lookuper) error {
	field, _, _ := strings.Cut(err.Error(), ":")
	sf, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok {
		return &ConfigError{Reason: fmt.Sprintf("read configuration: %v", err)}
	}
	name, def := envTag(sf)
	value, found := l.Lookup(name)
	if !found {
		value = def
	}
	return newConfigError(name, value, "%s", syntaxOf(sf.Type))
}

// envTag returns a field's variable name and default.
func envTag(sf reflect.StructField) (name, def string) {
	tag := sf.Tag.Get("env")
	name, opts, _ := strings.Cut(tag, ",")
	for o := range strings.SplitSeq(opts, ",") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(o), "default="); ok {
			def = d
		}
	}
	return strings.TrimSpace(name), def
}

// syntaxOf describes what a value of type t must look like.
func syntaxOf(t reflect.Type) string {
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "must be a duration such as 500ms, 10s or 1m30s"
	case t.Kind() == reflect.Bool:
		return "must be true or false"
	case t.Kind() == reflect.Int:
		return "must be a whole number"
	}
	return "cannot be parsed"
}

// errJoin joins errors, each once; nil when there are none.
func errJoin(errs []error) error {
	errs = slices.CompactFunc(errs, func(a, b error) bool { return a.Error() == b.Error() })
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}
