package deploytest

import (
	"os"
	"testing"
)

// TestMain removes what the build stage left on the host (runBuildStage)
// and the image the container test built.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.out.Root != "" {
		os.RemoveAll(built.out.Root)
	}
	removeTestImage()
	os.Exit(code)
}
