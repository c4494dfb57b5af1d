package mailman

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// python is Debian's interpreter, which has Mailman (mailman3) and pytest
// (python3-pytest); another python3 earlier on the PATH would not.
const python = "/usr/bin/python3"

// TestPluginPytest runs the plugin's Python tests (tests/): the shared
// fixtures, the reader, the gated switchboard against Mailman's own
// Switchboard, runner passes inside real Mailman, a real runner process
// and a CLI command. Without python3-pytest or mailman3 it skips, except
// under scripts/test.sh (storetest.EnvTestMinIO=require), where it fails:
// CI always runs them.
func TestPluginPytest(t *testing.T) {
	if out, err := exec.Command(python, "-c", "import pytest, mailman").CombinedOutput(); err != nil {
		msg := "needs " + python + " with pytest and mailman (apt-get install python3-pytest mailman3): " + strings.TrimSpace(string(out))
		if os.Getenv(storetest.EnvTestMinIO) == "require" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command(python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
		"-W", "ignore::DeprecationWarning", "tests")
	cmd.Env = append(withoutMailmanEnv(os.Environ()), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pytest failed (%v):\n%s", err, out)
	}
	summary := regexp.MustCompile(`(?m)^=*\s*(\d+ passed.*)$`).FindSubmatch(out)
	if summary == nil {
		t.Fatalf("no pytest summary in:\n%s", out)
	}
	if strings.Contains(string(summary[1]), "skipped") {
		t.Fatalf("pytest skipped tests: %s\n%s", summary[1], out)
	}
	t.Logf("pytest: %s", strings.Trim(string(summary[1]), "= "))
}

// withoutMailmanEnv drops the variables that would point Mailman at
// another site.
func withoutMailmanEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "MAILMAN_") && !strings.HasPrefix(kv, "PYTHONPATH=") {
			out = append(out, kv)
		}
	}
	return out
}
