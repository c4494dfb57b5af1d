package deploytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

// knownDirectives are the keys the fallback parser accepts per section
// (the ones deploy/systemd uses and their common neighbours). With
// systemd-analyze available, systemd itself is the judge.
var knownDirectives = map[string][]string{
	"Unit": {"Description", "Documentation", "Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds",
		"Conflicts", "Before", "After", "OnFailure", "ConditionPathExists", "AssertPathExists",
		"StartLimitIntervalSec", "StartLimitBurst"},
	"Service": {"Type", "User", "Group", "SupplementaryGroups", "UMask", "Environment", "EnvironmentFile",
		"LoadCredential", "SetCredential", "ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop",
		"ExecStopPost", "TimeoutStartSec", "TimeoutStopSec", "TimeoutSec", "KillSignal", "KillMode",
		"SendSIGKILL", "Restart", "RestartSec", "RestartPreventExitStatus", "SuccessExitStatus",
		"StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "ReadWritePaths", "ReadOnlyPaths",
		"InaccessiblePaths", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
		"DevicePolicy", "ProtectClock", "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules",
		"ProtectKernelTunables", "ProtectControlGroups", "ProtectProc", "ProcSubset", "CapabilityBoundingSet",
		"AmbientCapabilities", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
		"RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute", "SystemCallArchitectures",
		"SystemCallFilter", "SystemCallErrorNumber", "PrivateUsers", "RemoveIPC", "LimitNOFILE",
		"SyslogIdentifier", "PIDFile", "NotifyAccess", "WatchdogSec"},
	"Install": {"WantedBy", "RequiredBy", "Alias", "Also"},
}

// parseUnit parses systemd's unit syntax: [Section] headers, Key=Value
// lines, # and ; comments, backslash continuations. Unknown sections and
// (with strictKeys) unknown keys are errors.
func parseUnit(text string, strictKeys bool) (unitFile, error) {
	u := unitFile{}
	section := ""
	var pending string
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if pending != "" {
			line = pending + " " + line
			pending = ""
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if body, ok := strings.CutSuffix(line, `\`); ok {
			pending = strings.TrimSpace(body)
			continue
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: bad section header %q", i+1, line)
			}
			section = strings.Trim(line, "[]")
			if _, ok := knownDirectives[section]; !ok {
				return nil, fmt.Errorf("line %d: unknown section [%s]", i+1, section)
			}
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not Key=Value inside a section", i+1, line)
		}
		key = strings.TrimSpace(key)
		if strictKeys && !contains(knownDirectives[section], key) {
			return nil, fmt.Errorf("line %d: unknown key %s in [%s]", i+1, key, section)
		}
		u[section][key] = append(u[section][key], strings.TrimSpace(value))
	}
	if pending != "" {
		return nil, fmt.Errorf("continuation at end of file")
	}
	return u, nil
}

// one returns the single value of key, or "" when unset; several values
// are an error.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) > 1 {
		t.Errorf("[%s] %s set %d times", section, key, len(v))
	}
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// words returns every space-separated value of key across its lines.
func (u unitFile) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// parseEnvFile reads systemd EnvironmentFile syntax.
func parseEnvFile(text string) (map[string]string, error) {
	env := map[string]string{}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", i+1, line)
		}
		env[k] = strings.Trim(v, `"'`)
	}
	return env, nil
}

// parseSystemdTime parses the time spans the unit uses: "90", "90s",
// "3min", "2min 30s", "1h".
func parseSystemdTime(s string) (time.Duration, error) {
	var total time.Duration
	units := map[string]time.Duration{"": time.Second, "s": time.Second, "sec": time.Second, "min": time.Minute, "m": time.Minute, "h": time.Hour, "ms": time.Millisecond}
	parts := regexp.MustCompile(`(\d+)\s*([a-z]*)`).FindAllStringSubmatch(s, -1)
	if len(parts) == 0 {
		return 0, fmt.Errorf("bad time span %q", s)
	}
	for _, p := range parts {
		n, _ := strconv.Atoi(p[1])
		d, ok := units[p[2]]
		if !ok {
			return 0, fmt.Errorf("bad unit %q in %q", p[2], s)
		}
		total += time.Duration(n) * d
	}
	return total, nil
}

// TestSystemdUnit verifies the unit and the mailman3 drop-in with
// systemd-analyze when it is installed and always with the parser above,
// and
// checks the wiring: user, drain on stop, sandbox, readiness gate, timeouts
// and the environment.
func TestSystemdUnit(t *testing.T) {
	unitText := readRepoFile(t, "deploy/systemd/mmsidecar.service")
	dropText := readRepoFile(t, "deploy/systemd/mailman3.service.d/mmsidecar.conf")
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		t.Logf("verifying with %s, then with the test's own parser", analyze)
		verifyWithSystemd(t, analyze, unitText, dropText)
	} else {
		t.Logf("systemd-analyze not found: checking syntax and keys with the test's own parser only")
	}
	// The own parser always runs, strictly: it is the only check where
	// systemd-analyze is missing, so it is exercised everywhere.
	u, err := parseUnit(unitText, true)
	if err != nil {
		t.Fatalf("mmsidecar.service: %v", err)
	}
	drop, err := parseUnit(dropText, true)
	if err != nil {
		t.Fatalf("mailman3.service.d/mmsidecar.conf: %v", err)
	}

	if u.one(t, "Service", "User") != "list" || u.one(t, "Service", "Group") != "list" {
		t.Errorf("run as list:list, Debian's Mailman user")
	}
	if !contains(u.words("Unit", "Before"), "mailman3.service") {
		t.Errorf("[Unit] Before= must name mailman3.service")
	}
	if !contains(drop.words("Unit", "BindsTo"), "mmsidecar.service") || !contains(drop.words("Unit", "After"), "mmsidecar.service") {
		t.Errorf("the mailman3 drop-in must have BindsTo= and After=mmsidecar.service")
	}
	start := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(start) != 2 || filepath.Base(start[0]) != "mmsidecar" || start[1] != "run" {
		t.Errorf("ExecStart %v, want <path>/mmsidecar run", start)
	}
	stop := strings.Fields(u.one(t, "Service", "ExecStop"))
	if len(stop) < 2 || len(start) < 1 || stop[0] != start[0] || stop[1] != "drain" {
		t.Errorf("ExecStop %v, want %s drain", stop, start[0])
	}
	if u.one(t, "Service", "Restart") != "on-failure" {
		t.Errorf("Restart= must be on-failure")
	}
	for key, want := range map[string]string{"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes"} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s=%q, want %s", key, got, want)
		}
	}

	env := systemdEnv(t, u)
	requiredVars(t, "systemd", env)
	queue := env["MMSIDECAR_QUEUE_DIR"]
	if queue != "/var/lib/mailman3/queue" {
		t.Errorf("MMSIDECAR_QUEUE_DIR %q, want Debian's /var/lib/mailman3/queue", queue)
	}
	var writable bool
	for _, p := range u.words("Service", "ReadWritePaths") {
		p = strings.TrimLeft(p, "-+")
		writable = writable || queue == p || strings.HasPrefix(queue, p+"/")
	}
	if !writable {
		t.Errorf("ReadWritePaths= %v does not cover the queue %s (state and hold area live inside it)", u.words("Service", "ReadWritePaths"), queue)
	}
	creds := map[string]bool{}
	for _, c := range u["Service"]["LoadCredential"] {
		name, _, _ := strings.Cut(c, ":")
		creds[name] = true
	}
	for _, v := range []string{"MMSIDECAR_S3_ACCESS_KEY_FILE", "MMSIDECAR_S3_SECRET_KEY_FILE"} {
		if f := env[v]; f != "" && strings.HasPrefix(f, "/run/credentials/") && !creds[filepath.Base(f)] {
			t.Errorf("%s=%s: no LoadCredential=%s", v, f, filepath.Base(f))
		}
	}

	// Readiness: Type=notify, the sidecar's READY=1 (sd_notify) ends the
	// start job; the watchdog restarts a sidecar that stops answering.
	if u.one(t, "Service", "Type") != "notify" || u.one(t, "Service", "NotifyAccess") != "main" {
		t.Errorf("Type=%q NotifyAccess=%q, want notify and main (the sidecar sends READY=1 itself)", u.one(t, "Service", "Type"), u.one(t, "Service", "NotifyAccess"))
	}
	if len(u["Service"]["ExecStartPost"]) > 0 {
		t.Errorf("ExecStartPost %v: readiness is sd_notify's now, not a polling loop", u["Service"]["ExecStartPost"])
	}
	if wd, err := parseSystemdTime(u.one(t, "Service", "WatchdogSec")); err != nil || wd < 10*time.Second {
		t.Errorf("WatchdogSec %q (%v): want one of at least 10s (the sidecar pings at half of it)", u.one(t, "Service", "WatchdogSec"), err)
	}
	if f := env["MMSIDECAR_ADMIN_TOKEN_FILE"]; f == "" || !creds[filepath.Base(f)] {
		t.Errorf("MMSIDECAR_ADMIN_TOKEN_FILE=%q: want a LoadCredential= secret, for ExecStop's drain", f)
	}
	stopTimeout, err1 := parseSystemdTime(u.one(t, "Service", "TimeoutStopSec"))
	drain, err2 := time.ParseDuration(env["MMSIDECAR_DRAIN_TIMEOUT"])
	shutdown, err3 := time.ParseDuration(env["MMSIDECAR_SHUTDOWN_TIMEOUT"])
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("timeouts: TimeoutStopSec %v, MMSIDECAR_DRAIN_TIMEOUT %v, MMSIDECAR_SHUTDOWN_TIMEOUT %v", err1, err2, err3)
	}
	if stopTimeout <= drain+shutdown {
		t.Errorf("TimeoutStopSec %s must exceed MMSIDECAR_DRAIN_TIMEOUT %s + MMSIDECAR_SHUTDOWN_TIMEOUT %s", stopTimeout, drain, shutdown)
	}
}

// systemdEnv returns the service's environment: Environment= lines of the
// unit, overridden by deploy/systemd/mmsidecar.env (EnvironmentFile= wins).
func systemdEnv(t *testing.T, u unitFile) map[string]string {
	t.Helper()
	fileEnv, err := parseEnvFile(readRepoFile(t, "deploy/systemd/mmsidecar.env"))
	if err != nil {
		t.Fatalf("mmsidecar.env: %v", err)
	}
	env := map[string]string{}
	for _, e := range u["Service"]["Environment"] {
		k, v, _ := strings.Cut(strings.Trim(e, `"`), "=")
		env[k] = strings.ReplaceAll(v, "%d", "/run/credentials/mmsidecar.service")
	}
	for k, v := range fileEnv {
		env[k] = v
	}
	return env
}

// verifyWithSystemd runs systemd-analyze verify on copies of the unit and
// the drop-in, with the binary path pointing at the static build (verify
// insists that executables exist). Any message is a failure: systemd
// reports unknown keys as warnings and still exits 0.
func verifyWithSystemd(t *testing.T, analyze, unitText, dropText string) {
	t.Helper()
	dir := t.TempDir()
	bin := staticBinary(t)
	unitText = strings.ReplaceAll(unitText, "/usr/local/bin/mmsidecar", bin)
	if err := os.WriteFile(filepath.Join(dir, "mmsidecar.service"), []byte(unitText), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "mailman3.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mailman3.service.d", "mmsidecar.conf"), []byte(dropText), 0o644); err != nil {
		t.Fatal(err)
	}
	units := []string{filepath.Join(dir, "mmsidecar.service"), "mailman3.service"}
	if !systemUnitExists("mailman3.service") {
		// No Debian mailman3 here: a stand-in, so that the drop-in is read.
		stub := "[Unit]\nDescription=stand-in for Debian's mailman3\n[Service]\nType=exec\nExecStart=" + bin + " version\n"
		if err := os.WriteFile(filepath.Join(dir, "mailman3.service"), []byte(stub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(analyze, append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func systemUnitExists(name string) bool {
	for _, d := range []string{"/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return true
		}
	}
	return false
}

// TestUnitParser checks the fallback parser on the real unit and on
// seeded mistakes, since on machines with systemd-analyze it is not the
// only judge.
func TestUnitParser(t *testing.T) {
	unit := readRepoFile(t, "deploy/systemd/mmsidecar.service")
	tests := []struct {
		name, from, to string
		wantErr        string
	}{
		{"the unit as shipped", "", "", ""},
		{"misspelt key", "ProtectSystem=strict", "ProtectSystm=strict", "unknown key ProtectSystm"},
		{"misspelt section", "[Service]", "[Servce]", "unknown section"},
		{"not key=value", "User=list", "User list", "is not Key=Value"},
		{"continuation at the end", "WantedBy=multi-user.target\n", `WantedBy=multi-user.target \`, "continuation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := unit
			if tc.from != "" {
				text = strings.Replace(unit, tc.from, tc.to, 1)
				if text == unit {
					t.Fatalf("%q not in the unit", tc.from)
				}
			}
			_, err := parseUnit(text, true)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}
