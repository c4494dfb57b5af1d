package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// runHealth asks the local daemon whether it is ready (GET /readyz), or
// with -live only whether it answers (GET /healthz), and exits 0 when it
// says 200. It is what a container HEALTHCHECK runs: the image has no
// HTTP client of its own.
func runHealth(ctx context.Context, args []string) error {
	fs := newFlagSet("health", "Exit 0 when the local daemon is ready (GET /readyz answers 200), 1\notherwise. Talks to the daemon on MMSIDECAR_LISTEN_ADDR.")
	live := fs.Bool("live", false, "check GET /healthz (the process answers) instead of /readyz")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(ctx, nil)
	if err != nil {
		return err
	}
	path := "/readyz"
	if *live {
		path = "/healthz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	url := "http://" + cfg.ListenAddr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health: reach the daemon on MMSIDECAR_LISTEN_ADDR=%s: %w", cfg.ListenAddr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s answered %s: %s", path, resp.Status, msg)
	}
	fmt.Println(msg)
	return nil
}
