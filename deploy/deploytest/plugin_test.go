package deploytest

import (
	"fmt"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

// The runner gate plugin in the container deployments: the mailman-core
// image's entry point appends extraCfgPath to Mailman's configuration at
// every start, and the package must be on PYTHONPATH, which Mailman's
// master passes on to its runners.
const (
	extraCfgPath = "/opt/mailman/mailman-extra.cfg"
	extraCfgRepo = "deploy/compose/mailman-extra.cfg"
	pluginRepo   = "deploy/mailman/mailman_mmsidecar"
)

// minMailmanCore is the first mailman-core release whose entry point
// chowns only /opt/mailman/var: 0.4 runs `chown -R mailman /opt/mailman`
// under `set -e` and stops at a read-only file mounted there.
var minMailmanCore = [3]int{0, 5, 2}

// mailmanPlugin is the plugin as deploy/mailman ships it.
type mailmanPlugin struct {
	Package string            // the package (directory) name
	Class   string            // what the plugin section's class: names
	Files   map[string]string // its .py files by base name, verbatim
}

// loadPlugin reads deploy/mailman/mailman_mmsidecar: its .py files and
// the IPlugin class its __init__.py defines.
func loadPlugin(t *testing.T) mailmanPlugin {
	t.Helper()
	p := mailmanPlugin{Package: path.Base(pluginRepo), Files: map[string]string{}}
	entries, err := os.ReadDir(repoPath(t, pluginRepo))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".py") {
			p.Files[e.Name()] = readRepoFile(t, pluginRepo+"/"+e.Name())
		}
	}
	m := regexp.MustCompile(`(?m)^@implementer\(IPlugin\)\nclass (\w+)\b`).FindStringSubmatch(p.Files["__init__.py"])
	if m == nil || len(p.Files) < 3 {
		t.Fatalf("%s: want __init__.py defining an @implementer(IPlugin) class, and the modules; have %d files", pluginRepo, len(p.Files))
	}
	p.Class = p.Package + "." + m[1]
	return p
}

// pluginCfgProblems checks a Mailman configuration fragment for the
// plugin's section: named after the package (Mailman imports a package
// of the section's name), with the plugin's class, enabled, and no
// `configuration:` (the deployments keep the sidecar's default state
// directory, where the plugin looks without one).
func pluginCfgProblems(cfg string, p mailmanPlugin) []string {
	sections := map[string]map[string]string{}
	var cur map[string]string
	var problems []string
	for i, raw := range strings.Split(cfg, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			name := line[1 : len(line)-1]
			if sections[name] != nil {
				problems = append(problems, fmt.Sprintf("line %d: section [%s] twice", i+1, name))
			}
			cur = map[string]string{}
			sections[name] = cur
		case raw[0] == ' ' || raw[0] == '\t':
			// a continuation line
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok || cur == nil {
				problems = append(problems, fmt.Sprintf("line %d: %q is not key: value inside a section", i+1, line))
				continue
			}
			cur[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	sec := sections["plugin."+p.Package]
	switch {
	case sec == nil:
		problems = append(problems, fmt.Sprintf("no [plugin.%s] section", p.Package))
	case sec["class"] != p.Class:
		problems = append(problems, fmt.Sprintf("class: %q, want %s", sec["class"], p.Class))
	case !contains([]string{"yes", "true", "on", "1"}, strings.ToLower(sec["enabled"])):
		problems = append(problems, fmt.Sprintf("enabled: %q, want yes", sec["enabled"]))
	case sec["configuration"] != "":
		problems = append(problems, "configuration: is set, but the sidecars keep the default state directory")
	}
	return problems
}

// checkMailmanCoreImage: a maxking/mailman-core image at minMailmanCore
// or later.
func checkMailmanCoreImage(t *testing.T, who, image string) {
	t.Helper()
	repo, tag, _ := strings.Cut(image, ":")
	if path.Base(repo) != "mailman-core" {
		t.Errorf("%s: image %q is not mailman-core", who, image)
		return
	}
	parts := strings.Split(tag, ".")
	if len(parts) != 3 {
		t.Errorf("%s: image %q: pin a release A.B.C, at least %d.%d.%d", who, image, minMailmanCore[0], minMailmanCore[1], minMailmanCore[2])
		return
	}
	for i, s := range parts {
		n, err := strconv.Atoi(s)
		if err != nil || n < minMailmanCore[i] {
			t.Errorf("%s: image %q: before %d.%d.%d its entry point chowns all of /opt/mailman and stops at the plugin's read-only files",
				who, image, minMailmanCore[0], minMailmanCore[1], minMailmanCore[2])
			return
		}
		if n > minMailmanCore[i] {
			return
		}
	}
}

// pythonPath returns the directories of a PYTHONPATH value.
func pythonPath(v string) []string {
	var dirs []string
	for _, d := range strings.Split(v, ":") {
		if d != "" {
			dirs = append(dirs, path.Clean(d))
		}
	}
	return dirs
}

// checkComposePlugin: the Mailman service mm mounts the plugin's package
// from deploy/mailman read-only into a PYTHONPATH directory and
// deploy/compose/mailman-extra.cfg read-only where the image's entry
// point reads it; its sidecar keeps the default state directory.
func checkComposePlugin(t *testing.T, mm types.ServiceConfig, sidecarEnv map[string]string) {
	t.Helper()
	p := loadPlugin(t)
	checkMailmanCoreImage(t, mm.Name, mm.Image)
	if d := sidecarEnv["MMSIDECAR_STATE_DIR"]; d != "" {
		t.Errorf("%s: its sidecar sets MMSIDECAR_STATE_DIR=%s: the plugin section would need a configuration: file", mm.Name, d)
	}
	var pkg, cfg *types.ServiceVolumeConfig
	for i, v := range mm.Volumes {
		switch {
		case v.Type == types.VolumeTypeBind && v.Source == repoPath(t, pluginRepo):
			pkg = &mm.Volumes[i]
		case v.Target == extraCfgPath:
			cfg = &mm.Volumes[i]
		}
	}
	pp := pythonPath(derefOr(mm.Environment["PYTHONPATH"], ""))
	switch {
	case pkg == nil:
		t.Errorf("%s: %s is not mounted", mm.Name, pluginRepo)
	case !pkg.ReadOnly:
		t.Errorf("%s: %s is mounted writable (the entry point runs as root)", mm.Name, pluginRepo)
	case path.Base(pkg.Target) != p.Package || !contains(pp, path.Dir(pkg.Target)):
		t.Errorf("%s: the package is mounted at %s, but PYTHONPATH is %v: want <a PYTHONPATH directory>/%s", mm.Name, pkg.Target, pp, p.Package)
	}
	switch {
	case cfg == nil:
		t.Errorf("%s: nothing is mounted at %s", mm.Name, extraCfgPath)
	case cfg.Type != types.VolumeTypeBind || cfg.Source != repoPath(t, extraCfgRepo) || !cfg.ReadOnly:
		t.Errorf("%s: %s must be %s mounted read-only, is %s %s (read-only %v)", mm.Name, extraCfgPath, extraCfgRepo, cfg.Type, cfg.Source, cfg.ReadOnly)
	}
	for _, pr := range pluginCfgProblems(readRepoFile(t, extraCfgRepo), p) {
		t.Errorf("%s: %s", extraCfgRepo, pr)
	}
}
