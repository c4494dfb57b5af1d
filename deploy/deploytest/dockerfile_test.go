package deploytest

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	Cmd   string // upper case: FROM, RUN, ...
	Args  string
	Line  int
	Stage string // the AS name (or index) of the stage it belongs to
}

// dockerfile is a parsed Dockerfile: instructions in order, and the
// default value of every ARG per stage ("" stage: before the first FROM).
type dockerfile struct {
	Instrs []instruction
	Args   map[string]map[string]string
}

// parseDockerfile parses the subset of Dockerfile syntax the files in
// deploy/ use: comments, line continuations, instructions.
func parseDockerfile(t *testing.T, text string) dockerfile {
	t.Helper()
	df := dockerfile{Args: map[string]map[string]string{"": {}}}
	stage := ""
	stages := 0
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			stages++
			stage = strconv.Itoa(stages - 1)
			f := strings.Fields(in.Args)
			for i := range f {
				if strings.EqualFold(f[i], "AS") && i+1 < len(f) {
					stage = f[i+1]
				}
			}
			df.Args[stage] = map[string]string{}
		}
		in.Stage = stage
		if in.Cmd == "ARG" {
			for _, a := range strings.Fields(in.Args) {
				name, def, _ := strings.Cut(a, "=")
				df.Args[stage][name] = strings.Trim(def, `"`)
			}
		}
		df.Instrs = append(df.Instrs, in)
	}
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = i + 1
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	if stages == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	return df
}

// find returns the instructions with command cmd, in stage ("*": any).
func (d dockerfile) find(cmd, stage string) []instruction {
	var out []instruction
	for _, in := range d.Instrs {
		if in.Cmd == cmd && (stage == "*" || in.Stage == stage) {
			out = append(out, in)
		}
	}
	return out
}

// last returns the last instruction with command cmd in the final stage.
func (d dockerfile) last(t *testing.T, cmd string) instruction {
	t.Helper()
	final := d.Instrs[len(d.Instrs)-1].Stage
	found := d.find(cmd, final)
	if len(found) == 0 {
		t.Fatalf("Dockerfile: no %s in the final stage %q", cmd, final)
	}
	return found[len(found)-1]
}

// expand replaces ${NAME} and $NAME with vars[NAME]; unknown names are an
// error.
func expand(s string, vars map[string]string) (string, error) {
	var missing []string
	out := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`).ReplaceAllStringFunc(s, func(m string) string {
		name := strings.Trim(strings.TrimPrefix(m, "$"), "{}")
		v, ok := vars[name]
		if !ok {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("undefined %v in %q", missing, s)
	}
	return out, nil
}

// shellWords splits a shell command line into words, honouring single
// and double quotes and backslash escapes (no expansions).
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// jsonArray parses an exec-form instruction argument: ["a", "b"].
func jsonArray(t *testing.T, in instruction) []string {
	t.Helper()
	s := strings.TrimSpace(in.Args)
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		t.Fatalf("Dockerfile line %d: %s %s is not in exec (JSON array) form", in.Line, in.Cmd, s)
	}
	var out []string
	for _, part := range strings.Split(strings.Trim(s, "[]"), ",") {
		v, err := strconv.Unquote(strings.TrimSpace(part))
		if err != nil {
			t.Fatalf("Dockerfile line %d: %s: bad element %q", in.Line, in.Cmd, part)
		}
		out = append(out, v)
	}
	return out
}

// envOf returns the ENV settings of the final stage (KEY=VALUE form).
func (d dockerfile) envOf(t *testing.T) map[string]string {
	t.Helper()
	final := d.Instrs[len(d.Instrs)-1].Stage
	env := make(map[string]string)
	for _, in := range d.find("ENV", final) {
		words, err := shellWords(in.Args)
		if err != nil {
			t.Fatalf("Dockerfile line %d: %v", in.Line, err)
		}
		for _, w := range words {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				t.Fatalf("Dockerfile line %d: ENV %q: use KEY=VALUE", in.Line, w)
			}
			env[k] = v
		}
	}
	return env
}

// sidecarImage is what the other deployments must agree with.
type sidecarImage struct {
	UID, GID   int
	QueueDir   string
	ListenPort int
}

// imageFacts reads the runtime user, queue directory and listen port from
// deploy/Dockerfile.
func imageFacts(t *testing.T) sidecarImage {
	t.Helper()
	df := parseDockerfile(t, readRepoFile(t, "deploy/Dockerfile"))
	final := df.Instrs[len(df.Instrs)-1].Stage
	user, err := expand(df.last(t, "USER").Args, df.Args[final])
	if err != nil {
		t.Fatalf("Dockerfile USER: %v", err)
	}
	u, g, ok := strings.Cut(user, ":")
	uid, err1 := strconv.Atoi(u)
	gid, err2 := strconv.Atoi(g)
	if !ok || err1 != nil || err2 != nil {
		t.Fatalf("Dockerfile USER %q: want numeric uid:gid", user)
	}
	env := df.envOf(t)
	return sidecarImage{UID: uid, GID: gid, QueueDir: env["MMSIDECAR_QUEUE_DIR"],
		ListenPort: portOf(t, "Dockerfile MMSIDECAR_LISTEN_ADDR", env["MMSIDECAR_LISTEN_ADDR"])}
}
