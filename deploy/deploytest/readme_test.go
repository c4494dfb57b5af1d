package deploytest

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestReadmeSnippet decodes the Kubernetes snippet in README.md's
// "## Deployment" section strictly as a pod spec and checks that it agrees
// with deploy/kubernetes/mailman-core.yaml on what it shows.
func TestReadmeSnippet(t *testing.T) {
	readme := readRepoFile(t, "README.md")
	_, section, ok := strings.Cut(readme, "\n## Deployment\n")
	if !ok {
		t.Fatal("README.md has no \"## Deployment\" section")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("README.md Deployment section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	var snippet struct {
		Spec corev1.PodSpec `json:"spec"`
	}
	if err := decodeStrict([]byte(block), &snippet); err != nil {
		t.Fatalf("README snippet: %v", err)
	}
	pod := loadKubernetes(t, repoPath(t, "deploy", "kubernetes")).StatefulSets[0].Spec.Template.Spec
	want := pod.InitContainers[sidecarIndex(t, pod)]
	got := snippet.Spec.InitContainers[sidecarIndex(t, snippet.Spec)]
	wantEnv := containerEnv(want)
	for name, v := range containerEnv(got) {
		if wantEnv[name] != v {
			t.Errorf("README sets %s=%q, the manifest %q", name, v, wantEnv[name])
		}
	}
	same := func(what string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("README %s %v differs from the manifest's %v", what, a, b)
		}
	}
	if got.RestartPolicy == nil || got.StartupProbe == nil || got.ReadinessProbe == nil || got.LivenessProbe == nil ||
		got.SecurityContext == nil || snippet.Spec.SecurityContext == nil || len(snippet.Spec.Containers) == 0 ||
		snippet.Spec.Containers[0].Lifecycle == nil || snippet.Spec.TerminationGracePeriodSeconds == nil {
		t.Fatal("README snippet must show restartPolicy, the three probes, both securityContexts, the preStop hook and terminationGracePeriodSeconds")
	}
	same("restartPolicy", *got.RestartPolicy, *want.RestartPolicy)
	same("startupProbe path", got.StartupProbe.HTTPGet.Path, want.StartupProbe.HTTPGet.Path)
	same("readinessProbe path", got.ReadinessProbe.HTTPGet.Path, want.ReadinessProbe.HTTPGet.Path)
	same("livenessProbe path", got.LivenessProbe.HTTPGet.Path, want.LivenessProbe.HTTPGet.Path)
	same("runAsUser", *got.SecurityContext.RunAsUser, *want.SecurityContext.RunAsUser)
	same("runAsGroup", *got.SecurityContext.RunAsGroup, *want.SecurityContext.RunAsGroup)
	same("fsGroup", *snippet.Spec.SecurityContext.FSGroup, *pod.SecurityContext.FSGroup)
	same("preStop", snippet.Spec.Containers[0].Lifecycle.PreStop.Exec.Command, pod.Containers[0].Lifecycle.PreStop.Exec.Command)
	same("terminationGracePeriodSeconds", *snippet.Spec.TerminationGracePeriodSeconds, *pod.TerminationGracePeriodSeconds)

	// Mailman's container: what the README shows (image, environment,
	// mounts, among them the plugin's) is what the manifest has.
	gotMM, wantMM := snippet.Spec.Containers[0], pod.Containers[0]
	same("Mailman image", gotMM.Image, wantMM.Image)
	wantMMEnv := containerEnv(wantMM)
	for name, v := range containerEnv(gotMM) {
		if wantMMEnv[name] != v {
			t.Errorf("README sets %s=%q for Mailman, the manifest %q", name, v, wantMMEnv[name])
		}
	}
	for _, m := range gotMM.VolumeMounts {
		if !slices.ContainsFunc(wantMM.VolumeMounts, func(w corev1.VolumeMount) bool { return reflect.DeepEqual(w, m) }) {
			t.Errorf("README mounts %+v in Mailman's container, the manifest does not", m)
		}
	}
}

// TestLicense: the repository carries the Apache-2.0 text at its top,
// and the README says so.
func TestLicense(t *testing.T) {
	text := readRepoFile(t, "LICENSE")
	for _, want := range []string{"Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS AND CONDITIONS"} {
		if !strings.Contains(text, want) {
			t.Errorf("LICENSE lacks %q: not the Apache-2.0 text", want)
		}
	}
	if readme := readRepoFile(t, "README.md"); !strings.Contains(readme, "Apache-2.0") || !strings.Contains(readme, "(LICENSE)") {
		t.Errorf("README.md does not name the license and link LICENSE")
	}
}
