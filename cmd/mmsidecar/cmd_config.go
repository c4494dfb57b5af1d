package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// configEntry is one variable as `config -json` prints it.
type configEntry struct {
	Name string `json:"name"`
	// Value is the value in effect ("(redacted)" for a secret that is
	// set, "" when unset).
	Value string `json:"value"`
	// Source is environment, file (a secret read through its _FILE
	// variable), default, computed or unset.
	Source string `json:"source"`
	// Default is the env tag's default, or what an empty one means.
	Default string `json:"default"`
	// Meaning is the table's description.
	Meaning string `json:"meaning"`
}

func runConfig(ctx context.Context, args []string) error {
	fs := newFlagSet("config", "Print every MMSIDECAR_ variable the sidecar reads, with its meaning, its\ndefault, the value in effect and where that value comes from (the\nenvironment, a _FILE, the default, or computed). Secrets are shown as\n(redacted). Configuration errors are listed after the variables (exit 2).")
	asJSON := fs.Bool("json", false, "print a JSON array of {name, value, source, default, meaning}")
	example := fs.Bool("env-example", false, "print .env.example (the repository's copy is generated with this)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *example {
		return writeEnvExample(os.Stdout)
	}
	cfg, loadErr := LoadConfig(ctx, nil)
	entries := configEntries(cfg)
	var err error
	if *asJSON {
		err = writeJSON(os.Stdout, entries)
	} else {
		err = printConfig(os.Stdout, entries)
	}
	if err != nil {
		return err
	}
	return loadErr
}

// configEntries describes every variable with cfg's value in effect.
func configEntries(cfg *Config) []configEntry {
	v := reflect.ValueOf(cfg).Elem()
	var out []configEntry
	for _, s := range settings() {
		e := configEntry{Name: s.Name, Default: s.Default, Meaning: s.Doc}
		if e.Default == "" {
			e.Default = s.Computed
		}
		e.Value = formatValue(v.FieldByName(s.Field))
		switch {
		case cfg.isBad(s.Name):
			e.Source = "environment (invalid: the default is shown)"
		case cfg.isSet(s.Name):
			e.Source = "environment"
		case cfg.meta != nil && cfg.meta.secretFile[s.Name] != "":
			e.Source = "file (" + cfg.meta.secretFile[s.Name] + ")"
		case e.Value == "":
			e.Source = "unset"
		case s.Default != "" && e.Value == s.Default:
			e.Source = "default"
		default:
			e.Source = "computed"
		}
		out = append(out, e)
	}
	return out
}

// formatValue prints a Config field as the variable would be written.
func formatValue(f reflect.Value) string {
	switch x := f.Interface().(type) {
	case Secret:
		if x == "" {
			return ""
		}
		return x.String()
	case time.Duration:
		return x.String()
	case []string:
		return strings.Join(x, ",")
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	}
	return fmt.Sprint(f.Interface())
}

func printConfig(w io.Writer, entries []configEntry) error {
	var b strings.Builder
	for _, e := range entries {
		value := e.Value
		if value == "" {
			value = "(not set)"
		}
		fmt.Fprintf(&b, "%s = %s  [%s]\n", e.Name, value, e.Source)
		if e.Default != "" {
			b.WriteString(wrap("default: "+e.Default, "    ", 78))
		}
		b.WriteString(wrap(e.Meaning, "    ", 78))
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
