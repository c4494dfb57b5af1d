package deploytest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// repoRoot returns the repository root: the nearest parent directory of
// the test's working directory that holds go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// repoPath joins elements onto the repository root.
func repoPath(t testing.TB, elem ...string) string {
	return filepath.Join(append([]string{repoRoot(t)}, elem...)...)
}

// readRepoFile reads a file given relative to the repository root.
func readRepoFile(t testing.TB, rel string) string {
	t.Helper()
	data, err := os.ReadFile(repoPath(t, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return string(data)
}

// configVars are the MMSIDECAR_ variables that cmd/mmsidecar's Config
// reads, parsed from the env struct tags in config.go.
var configVars = struct {
	once  sync.Once
	names map[string]bool
	err   error
}{}

// knownVars returns the variables Config reads. It parses the source
// rather than importing package main.
func knownVars(t testing.TB) map[string]bool {
	t.Helper()
	configVars.once.Do(func() {
		configVars.names, configVars.err = parseEnvTags(repoPath(t, "cmd", "mmsidecar", "config.go"))
	})
	if configVars.err != nil {
		t.Fatalf("parse config.go: %v", configVars.err)
	}
	if len(configVars.names) < 10 {
		t.Fatalf("config.go: only %d env tags found: %v", len(configVars.names), configVars.names)
	}
	return configVars.names
}

// parseEnvTags returns the variable names of the `env:"NAME, ..."` tags of
// the Config struct in file.
func parseEnvTags(file string) (map[string]bool, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, nil, 0)
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool)
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok || ts.Name.Name != "Config" {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		for _, field := range st.Fields.List {
			if field.Tag == nil {
				continue
			}
			raw, err := strconv.Unquote(field.Tag.Value)
			if err != nil {
				continue
			}
			name, _, _ := strings.Cut(reflect.StructTag(raw).Get("env"), ",")
			if name = strings.TrimSpace(name); name != "" {
				names[name] = true
			}
		}
		return false
	})
	return names, nil
}

// requiredVars checks that env, one deployment's sidecar environment, sets
// what every cluster node needs: a node id, the queue directory, the
// endpoint, both keys (directly or through their _FILE forms) and cluster
// mode. Values may be placeholders such as "fieldRef:metadata.name".
func requiredVars(t *testing.T, deployment string, env map[string]string) {
	t.Helper()
	known := knownVars(t)
	for name := range env {
		if strings.HasPrefix(name, "MMSIDECAR_") && !known[name] {
			t.Errorf("%s: sets %s, which cmd/mmsidecar does not read", deployment, name)
		}
	}
	for _, name := range []string{"MMSIDECAR_NODE_ID", "MMSIDECAR_QUEUE_DIR", "MMSIDECAR_S3_ENDPOINT"} {
		if env[name] == "" {
			t.Errorf("%s: %s is not set", deployment, name)
		}
	}
	for _, key := range []string{"MMSIDECAR_S3_ACCESS_KEY", "MMSIDECAR_S3_SECRET_KEY"} {
		direct, file := env[key] != "", env[key+"_FILE"] != ""
		switch {
		case !direct && !file:
			t.Errorf("%s: neither %s nor %s_FILE is set", deployment, key, key)
		case direct && file:
			t.Errorf("%s: both %s and %s_FILE are set (the sidecar refuses that)", deployment, key, key)
		}
	}
	if got := env["MMSIDECAR_MODE"]; got != "cluster" {
		t.Errorf("%s: MMSIDECAR_MODE = %q, want cluster", deployment, got)
	}
}

// portOf returns the port of a host:port address.
func portOf(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q is not host:port: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q has a bad port: %v", what, addr, err)
	}
	return n
}

var varRef = regexp.MustCompile(`MMSIDECAR_[A-Z0-9_]+`)

// mentionedVars returns every MMSIDECAR_ name in text, sorted.
func mentionedVars(text string) []string {
	seen := make(map[string]bool)
	for _, m := range varRef.FindAllString(text, -1) {
		seen[strings.TrimRight(m, "_")] = true
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// deployFiles returns every regular file under deploy/ (relative paths,
// slash-separated), plus docs/operations.md.
func deployFiles(t *testing.T) []string {
	t.Helper()
	root := repoRoot(t)
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, path)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk deploy: %v", err)
	}
	return append(files, "docs/operations.md")
}
