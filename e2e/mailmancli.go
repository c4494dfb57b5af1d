//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CLI runs Mailman's `mailman` command against one node's config, as the
// node's user (umask 007), so that files it creates (the shared SQLite
// database on first use, list data) belong to the Mailman user.
type CLI struct {
	m *Mailman
}

// CLI returns the node's command-line runner. The master need not be
// running: the commands work on the database directly.
func (m *Mailman) CLI() *CLI { return &CLI{m: m} }

// Run runs `mailman -C cfg ARGS...` with stdin (may be empty) and returns
// its combined output.
func (c *CLI) Run(ctx context.Context, stdin string, args ...string) (string, error) {
	return c.run(ctx, stdin, nil, args...)
}

func (c *CLI) run(ctx context.Context, stdin string, env []string, args ...string) (string, error) {
	acct := c.m.cfg.List
	out, err := RunProcess(ctx, ProcessSpec{
		Name:   "mailman " + strings.Join(args, " "),
		Path:   Python,
		Args:   append([]string{filepath.Join(MailmanBinDir, "mailman"), "-C", c.m.cfgPath}, args...),
		Env:    mergeEnv(c.m.cfg.Env, env),
		Dir:    c.m.varDir,
		AsUser: &acct,
	}, stdin)
	if err != nil {
		return out, fmt.Errorf("%w\n%s", err, out)
	}
	return out, nil
}

// mergeEnv returns base with extra's variables added; a PYTHONPATH in
// both is joined (extra's directories first), any other of extra's wins.
func mergeEnv(base, extra []string) []string {
	out := slices.Clone(base)
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		i := slices.IndexFunc(out, func(s string) bool { return strings.HasPrefix(s, k+"=") })
		switch {
		case i < 0:
			out = append(out, kv)
		case k == "PYTHONPATH":
			out[i] = k + "=" + v + ":" + strings.TrimPrefix(out[i], k+"=")
		default:
			out[i] = kv
		}
	}
	return out
}

// CreateList creates a list (and its domain) with no owner and no notice.
func (c *CLI) CreateList(ctx context.Context, fqdn string) error {
	_, err := c.Run(ctx, "", "create", "--quiet", fqdn)
	return err
}

// AddMembers subscribes addrs to list as regular members without welcome
// messages.
func (c *CLI) AddMembers(ctx context.Context, list string, addrs []string) error {
	_, err := c.Run(ctx, strings.Join(addrs, "\n")+"\n", "addmembers", "--no-welcome-msg", "-", list)
	return err
}

// Members lists list's member addresses.
func (c *CLI) Members(ctx context.Context, list string) ([]string, error) {
	out, err := c.Run(ctx, "", "members", list)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, "@") {
			addrs = append(addrs, l)
		}
	}
	return addrs, nil
}

// Shell runs Python statements against list through `mailman shell -l
// LIST -r MODULE.run`: body is the unindented body of `def run(m):`,
// with m the mailing list. The transaction is committed when the body
// returns without an exception. It returns what the body printed.
func (c *CLI) Shell(ctx context.Context, list, body string) (string, error) {
	dir, err := os.MkdirTemp(c.m.cfg.Dir, "pyshell-")
	if err != nil {
		return "", fmt.Errorf("make shell dir: %w", err)
	}
	defer os.RemoveAll(dir)
	var src strings.Builder
	src.WriteString("def run(m):\n")
	for _, l := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		src.WriteString("    " + l + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "e2eshell.py"), []byte(src.String()), 0o644); err != nil {
		return "", fmt.Errorf("write shell script: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", fmt.Errorf("chmod shell dir: %w", err)
	}
	return c.run(ctx, "", []string{"PYTHONPATH=" + dir}, "shell", "-l", list, "-r", "e2eshell.run")
}

// ConfigureTestList makes list accept every post without moderation and
// keeps the pipeline to delivery only: non-member posts accepted, no
// archiving, no digests, no welcome or goodbye messages, no
// administrivia or implicit-destination holds.
//
// It also creates, once and up front, the rows Mailman 3.3.8 otherwise
// creates lazily on the first post, because two nodes sharing one
// database race on them: the list's ListArchiver rows (created on first
// decoration without a unique constraint; duplicates make every later
// delivery of the list fail with MultipleResultsFound and be shunted) and
// each sender's address and nonmember record (created by the in and
// pipeline runners on a sender's first post).
func (c *CLI) ConfigureTestList(ctx context.Context, list string, senders []string) (ListSummary, error) {
	var quoted []string
	for _, s := range senders {
		quoted = append(quoted, fmt.Sprintf("%q", s))
	}
	out, err := c.Shell(ctx, list, `import json
from zope.component import getUtility
from mailman.interfaces.action import Action
from mailman.interfaces.archiver import ArchivePolicy
from mailman.interfaces.mailinglist import IListArchiverSet
from mailman.interfaces.member import MemberRole
from mailman.interfaces.usermanager import IUserManager
m.default_nonmember_action = Action.accept
m.default_member_action = Action.accept
m.archive_policy = ArchivePolicy.never
m.digests_enabled = False
m.send_welcome_message = False
m.send_goodbye_message = False
m.administrivia = False
m.require_explicit_destination = False
archivers = sorted(a.name for a in IListArchiverSet(m).archivers)
um = getUtility(IUserManager)
for sender in [`+strings.Join(quoted, ", ")+`]:
    addr = um.get_address(sender) or um.create_address(sender)
    if m.nonmembers.get_member(sender) is None:
        m.subscribe(addr, MemberRole.nonmember)
print("E2E-SUMMARY " + json.dumps({
    "list_id": m.list_id,
    "members": sorted(str(a.email) for a in m.members.addresses),
    "nonmembers": sorted(str(a.email) for a in m.nonmembers.addresses),
    "archivers": archivers,
    "nonmember_action": m.default_nonmember_action.name,
}))`)
	if err != nil {
		return ListSummary{}, err
	}
	_, js, ok := strings.Cut(out, "E2E-SUMMARY ")
	if !ok {
		return ListSummary{}, fmt.Errorf("configure list %s: unexpected output %q", list, out)
	}
	var sum ListSummary
	if err := json.Unmarshal([]byte(strings.TrimSpace(js)), &sum); err != nil {
		return ListSummary{}, fmt.Errorf("configure list %s: parse summary: %w", list, err)
	}
	return sum, nil
}

// ListSummary is the state of a list after ConfigureTestList.
type ListSummary struct {
	ListID          string   `json:"list_id"`
	Members         []string `json:"members"`
	Nonmembers      []string `json:"nonmembers"`
	Archivers       []string `json:"archivers"`
	NonmemberAction string   `json:"nonmember_action"`
}
