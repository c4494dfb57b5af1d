package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/probe"
)

// Step names in check's output, besides the probes' own.
const (
	stepConfig    = "config"
	stepReachable = "store-reachable"
)

// errStoreUnsafe is check's error when a probe failed.
var errStoreUnsafe = errors.New("store is unsafe")

// checkStep is one line of check's verdict.
type checkStep struct {
	OK         bool    `json:"ok"`
	Detail     string  `json:"detail"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	took       time.Duration
}

// checkOutput is check's stable JSON output:
//
//	{"ok": bool, "config": step, "store": step, "probe": {"safe", "results": [...]}}
//
// where a step is {"ok", "detail", "duration_ms"}; "store" is absent when
// the configuration is invalid and "probe" when the store is unreachable.
type checkOutput struct {
	OK     bool            `json:"ok"`
	Config checkStep       `json:"config"`
	Store  *checkStep      `json:"store,omitempty"`
	Probe  json.RawMessage `json:"probe,omitempty"`
	// Warnings are loud notes that do not fail the check, such as cluster
	// mode on a store only this host can see.
	Warnings []string `json:"warnings,omitempty"`
}

func runCheck(ctx context.Context, args []string) error {
	fs := newFlagSet("check", "Validate the configuration, reach the store and probe that it honours\nconditional writes. Exits 0 when the store is safe, 1 when it is\nunreachable or unsafe, 2 on a configuration error.")
	asJSON := fs.Bool("json", false, "print the verdicts as one JSON object")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, stop := interruptContext(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	cfg, err := LoadConfig(ctx, nil)
	if err != nil {
		return checkFailed(checkOutput{Config: checkStep{Detail: err.Error()}}, *asJSON, err)
	}
	if cfg.S3Endpoint == "" {
		if why, missing := embeddedStoreOwner(cfg); why != "" {
			return checkEmbeddedUnprobed(cfg, why, missing, *asJSON)
		}
	}
	st, err := openStore(cfg)
	var ce *ConfigError
	switch {
	case errors.As(err, &ce):
		return checkFailed(checkOutput{Config: checkStep{Detail: err.Error()}}, *asJSON, err)
	case err != nil:
		out := checkOutput{Config: checkStep{OK: true, Detail: configSummary(cfg)}, Store: &checkStep{Detail: err.Error()}}
		return checkFailed(out, *asJSON, err)
	}
	defer closeStore(st)
	return check(ctx, cfg, st, os.Stdout, *asJSON)
}

// checkEmbeddedUnprobed reports an embedded store that check leaves
// alone: one that does not exist yet (nothing to probe: ok) or one that
// belongs to another user (writing into it would break the daemon: fail).
func checkEmbeddedUnprobed(cfg *Config, why string, missing bool, asJSON bool) error {
	out := checkOutput{OK: missing, Config: checkStep{OK: true, Detail: configSummary(cfg)}, Warnings: checkWarnings(cfg),
		Store: &checkStep{OK: missing, Detail: fmt.Sprintf("embedded directory store %s %s", cfg.StoreDir, why)}}
	var result error
	if !missing {
		result = fmt.Errorf("store not probed: %s", out.Store.Detail)
	}
	if asJSON {
		if err := writeJSON(os.Stdout, out); err != nil {
			return err
		}
		return result
	}
	var text strings.Builder
	writeStep(&text, stepConfig, out.Config)
	writeStep(&text, stepReachable, *out.Store)
	writeWarnings(&text, out.Warnings)
	if _, err := io.WriteString(os.Stdout, text.String()); err != nil {
		return err
	}
	return result
}

// checkWarnings are the loud notes check adds to a passing verdict.
func checkWarnings(cfg *Config) []string {
	if w := localStoreWarning(cfg); w != "" {
		return []string{w}
	}
	return nil
}

func writeWarnings(w io.Writer, warnings []string) {
	for _, warn := range warnings {
		fmt.Fprintf(w, "WARN %s\n", warn)
	}
}

// checkFailed reports a check that ended before the store could be
// probed: in JSON on stdout when asked (text goes to stderr with err).
func checkFailed(out checkOutput, asJSON bool, err error) error {
	if asJSON {
		if werr := writeJSON(os.Stdout, out); werr != nil {
			return werr
		}
	}
	return err
}

// check reaches st, probes it and writes a verdict per step to w, as text
// or JSON. It returns nil only when the store is reachable and safe.
func check(ctx context.Context, cfg *Config, st store.Store, w io.Writer, asJSON bool) error {
	prefix := fence.NewLayout(cfg.S3Prefix).Prefix()
	out := checkOutput{Config: checkStep{OK: true, Detail: configSummary(cfg)}, Warnings: checkWarnings(cfg)}
	var text strings.Builder
	writeStep(&text, stepConfig, out.Config)

	reach := reachStore(ctx, cfg, st, prefix)
	out.Store = &reach
	writeStep(&text, stepReachable, reach)
	var result error
	if !reach.OK {
		text.WriteString("store is UNREACHABLE\n")
		result = fmt.Errorf("store unreachable: %s", reach.Detail)
	} else {
		rep := probe.Run(ctx, st, probe.Options{Prefix: prefix})
		rep.Write(&text)
		js, err := rep.JSON()
		if err != nil {
			return fmt.Errorf("encode probe report: %w", err)
		}
		out.Probe = js
		switch {
		case !rep.Safe() && !rep.Unsafe():
			result = fmt.Errorf("store not verified: %s failed with store errors", strings.Join(rep.Failed(), ", "))
		case !rep.Safe():
			result = fmt.Errorf("%w: %s failed", errStoreUnsafe, strings.Join(rep.Failed(), ", "))
			if cfg.AllowUnsafeStore {
				text.WriteString("WARNING: MMSIDECAR_ALLOW_UNSAFE_STORE=true: `run` would start on this store anyway\n")
			}
		}
	}
	writeWarnings(&text, out.Warnings)
	out.OK = result == nil
	if asJSON {
		if err := writeJSON(w, out); err != nil {
			return err
		}
		return result
	}
	if _, err := io.WriteString(w, text.String()); err != nil {
		return fmt.Errorf("write verdict: %w", err)
	}
	return result
}

// reachStore checks that the store answers a LIST under prefix, stopping
// at the first key.
func reachStore(ctx context.Context, cfg *Config, st store.Store, prefix string) checkStep {
	errFirst := errors.New("first key")
	ctx, cancel := context.WithTimeout(ctx, 2*cfg.S3RequestTimeout)
	defer cancel()
	start := time.Now()
	found := 0
	err := st.List(ctx, prefix, func(store.Info) error {
		found++
		return errFirst
	})
	took := time.Since(start)
	step := checkStep{DurationMS: float64(took.Microseconds()) / 1000, took: took}
	if err != nil && !errors.Is(err, errFirst) {
		step.Detail = fmt.Sprintf("list %q on %s: %v", prefix, storeDescription(cfg), err)
		return step
	}
	step.OK = true
	what := "empty"
	if found > 0 {
		what = "holds objects"
	}
	step.Detail = fmt.Sprintf("listed %q on %s: %s", prefix, storeDescription(cfg), what)
	return step
}

// configSummary describes the effective configuration in one line,
// without secrets.
func configSummary(cfg *Config) string {
	queues := "every queue directory present"
	if names, err := cfg.QueueNames(); err == nil && len(cfg.Queues) == 0 {
		queues += " (now: " + strings.Join(names, ",") + ")"
	} else if len(cfg.Queues) > 0 {
		queues = strings.Join(cfg.Queues, ",")
	}
	return fmt.Sprintf("node %s, mode %s, queue dir %s, queues %s, files %d:%d, lease ttl %s grace %s margin %s",
		cfg.NodeID, cfg.Mode, cfg.QueueDir, queues, cfg.FileUID, cfg.FileGID, cfg.LeaseTTL, cfg.LeaseGrace, cfg.LeaseMargin)
}

func writeStep(w io.Writer, name string, s checkStep) {
	status := "ok"
	if !s.OK {
		status = "FAIL"
	}
	if s.took > 0 {
		fmt.Fprintf(w, "%-4s %-21s %s (%s)\n", status, name, s.Detail, s.took.Round(time.Microsecond))
		return
	}
	fmt.Fprintf(w, "%-4s %-21s %s\n", status, name, s.Detail)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}
