package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// version and commit are set at build time with -ldflags "-X
// main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"; commit is
// needed where the toolchain cannot stamp it (a build without .git, like
// the container image's).
var (
	version = "dev"
	commit  = ""
)

// buildInfo describes the binary.
type buildInfo struct {
	Version   string
	Commit    string
	Modified  bool
	GoVersion string
	Platform  string
}

// readBuildInfo combines the -ldflags version and commit with the VCS
// stamp the Go toolchain records (absent with -buildvcs=false or outside a
// checkout).
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	if bi.Version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		bi.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			if bi.Commit == "" {
				bi.Commit = s.Value
			}
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

// String formats the build as one line.
func (b buildInfo) String() string {
	commit := b.Commit
	if commit == "" {
		commit = "unknown"
	}
	if b.Modified {
		commit += "+modified"
	}
	return fmt.Sprintf("mmsidecar %s (commit %s, %s, %s)", b.Version, commit, b.GoVersion, b.Platform)
}

func runVersion(_ context.Context, args []string) error {
	fs := newFlagSet("version", "Print version, commit and Go version.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return printVersion(os.Stdout)
}

func printVersion(w io.Writer) error {
	_, err := fmt.Fprintln(w, readBuildInfo())
	return err
}
