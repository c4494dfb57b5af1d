package deploytest

import (
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// k8sObjects holds every object decoded from deploy/kubernetes.
type k8sObjects struct {
	StatefulSets []*appsv1.StatefulSet
	Services     []*corev1.Service
	ConfigMaps   []*corev1.ConfigMap
	Secrets      []*corev1.Secret
	PDBs         []*policyv1.PodDisruptionBudget
	Policies     []*networkingv1.NetworkPolicy
}

// decodeStrict decodes one YAML document the way the API server's strict
// field validation does: duplicate keys, unknown fields and fields in the
// wrong case are errors.
func decodeStrict(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	if len(strict) > 0 {
		return fmt.Errorf("strict decoding: %v", strict)
	}
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadKubernetes decodes every document of every .yaml file under dir
// into its k8s.io/api type; an unknown apiVersion/kind is an error.
func loadKubernetes(t *testing.T, dir string) k8sObjects {
	t.Helper()
	var objs k8sObjects
	count := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || (!strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".yml")) {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, doc := range docSeparator.Split(string(data), -1) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				return fmt.Errorf("%s document %d: %w", p, i+1, err)
			}
			if tm.APIVersion == "" && tm.Kind == "" {
				if strings.TrimSpace(stripComments(doc)) != "" {
					return fmt.Errorf("%s document %d: no apiVersion/kind", p, i+1)
				}
				continue
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 StatefulSet":
				o := new(appsv1.StatefulSet)
				objs.StatefulSets, obj = append(objs.StatefulSets, o), o
			case "v1 Service":
				o := new(corev1.Service)
				objs.Services, obj = append(objs.Services, o), o
			case "v1 ConfigMap":
				o := new(corev1.ConfigMap)
				objs.ConfigMaps, obj = append(objs.ConfigMaps, o), o
			case "v1 Secret":
				o := new(corev1.Secret)
				objs.Secrets, obj = append(objs.Secrets, o), o
			case "policy/v1 PodDisruptionBudget":
				o := new(policyv1.PodDisruptionBudget)
				objs.PDBs, obj = append(objs.PDBs, o), o
			case "networking.k8s.io/v1 NetworkPolicy":
				o := new(networkingv1.NetworkPolicy)
				objs.Policies, obj = append(objs.Policies, o), o
			default:
				return fmt.Errorf("%s document %d: %s %s is not a type this test knows: add it", p, i+1, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict([]byte(doc), obj); err != nil {
				return fmt.Errorf("%s document %d (%s): %w", p, i+1, tm.Kind, err)
			}
			count++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if count == 0 {
		t.Fatalf("no Kubernetes objects under %s", dir)
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestKubernetesManifestsStrict decodes every manifest strictly.
func TestKubernetesManifestsStrict(t *testing.T) {
	objs := loadKubernetes(t, repoPath(t, "deploy", "kubernetes"))
	if len(objs.StatefulSets) != 1 || len(objs.PDBs) != 1 || len(objs.Policies) != 1 {
		t.Fatalf("want one StatefulSet, PodDisruptionBudget and NetworkPolicy, have %d, %d, %d",
			len(objs.StatefulSets), len(objs.PDBs), len(objs.Policies))
	}
}

// TestKubernetesSidecar checks the StatefulSet's wiring: a native sidecar
// sharing Mailman's queue volume, node id from the pod name, keys from a
// Secret through _FILE, probes and Prometheus on the listen port, the
// image's user, the drain hook and the grace period it needs.
func TestKubernetesSidecar(t *testing.T) {
	objs := loadKubernetes(t, repoPath(t, "deploy", "kubernetes"))
	img := imageFacts(t)
	sts := objs.StatefulSets[0]
	pod := sts.Spec.Template.Spec
	sidecarIdx := sidecarIndex(t, pod)
	for _, c := range pod.Containers {
		if strings.Contains(c.Image, "mmsidecar") {
			t.Errorf("container %s runs mmsidecar as a main container: it must be a native sidecar", c.Name)
		}
	}
	sc := pod.InitContainers[sidecarIdx]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("init container %s: restartPolicy must be Always (native sidecar)", sc.Name)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one main container (Mailman), have %d", len(pod.Containers))
	}
	mm := pod.Containers[0]

	env := containerEnv(sc)
	requiredVars(t, "kubernetes "+sc.Name, env)
	if env["MMSIDECAR_NODE_ID"] != "fieldRef:metadata.name" {
		t.Errorf("MMSIDECAR_NODE_ID = %q, want the pod name (fieldRef metadata.name)", env["MMSIDECAR_NODE_ID"])
	}
	if env["MMSIDECAR_QUEUE_DIR"] != img.QueueDir {
		t.Errorf("MMSIDECAR_QUEUE_DIR %q differs from the image's %q", env["MMSIDECAR_QUEUE_DIR"], img.QueueDir)
	}

	// The queue: one volume from the claim templates, mounted at the same
	// place in the sidecar and in Mailman, created before the sidecar.
	qm, ok := mountFor(sc.VolumeMounts, env["MMSIDECAR_QUEUE_DIR"])
	if !ok {
		t.Fatalf("no sidecar volume mount holds %s", env["MMSIDECAR_QUEUE_DIR"])
	}
	if mq, ok := mountFor(mm.VolumeMounts, env["MMSIDECAR_QUEUE_DIR"]); !ok || mq.Name != qm.Name || mq.MountPath != qm.MountPath {
		t.Errorf("Mailman does not mount volume %s at %s like the sidecar", qm.Name, qm.MountPath)
	}
	var claimed bool
	for _, c := range sts.Spec.VolumeClaimTemplates {
		claimed = claimed || c.Name == qm.Name
	}
	if !claimed {
		t.Errorf("queue volume %s is not a volumeClaimTemplate: the queue must survive the pod", qm.Name)
	}
	var created bool
	for _, c := range pod.InitContainers[:sidecarIdx] {
		if _, ok := mountFor(c.VolumeMounts, env["MMSIDECAR_QUEUE_DIR"]); ok && strings.Contains(strings.Join(c.Command, " "), "mkdir -p "+env["MMSIDECAR_QUEUE_DIR"]) {
			created = true
		}
	}
	if !created {
		t.Errorf("no init container before the sidecar creates %s (the sidecar requires it; Mailman makes it only when it starts)", env["MMSIDECAR_QUEUE_DIR"])
	}

	checkSecretFiles(t, objs, pod, sc, env)
	checkProbesAndPort(t, sts, sc, env, img)
	checkSecurity(t, pod, sc, img)
	checkDrainHook(t, objs, pod, mm, img)
	for _, c := range append([]corev1.Container{sc}, pod.Containers...) {
		r := c.Resources
		if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
			t.Errorf("container %s: set cpu and memory requests and a memory limit", c.Name)
		}
	}
}

// sidecarIndex returns the index of the mmsidecar init container.
func sidecarIndex(t *testing.T, pod corev1.PodSpec) int {
	t.Helper()
	for i, c := range pod.InitContainers {
		if strings.Contains(c.Image, "mmsidecar") {
			return i
		}
	}
	t.Fatal("no mmsidecar image among the init containers")
	return -1
}

// containerEnv returns a container's env; references are shown as
// "fieldRef:PATH" or "valueFrom".
func containerEnv(c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		case e.ValueFrom != nil:
			env[e.Name] = "valueFrom"
		default:
			env[e.Name] = e.Value
		}
	}
	return env
}

// kubernetesSidecarEnv returns the sidecar's env in the StatefulSet.
func kubernetesSidecarEnv(t *testing.T) map[string]string {
	t.Helper()
	pod := loadKubernetes(t, repoPath(t, "deploy", "kubernetes")).StatefulSets[0].Spec.Template.Spec
	return containerEnv(pod.InitContainers[sidecarIndex(t, pod)])
}

// mountFor returns the mount whose path holds dir.
func mountFor(mounts []corev1.VolumeMount, dir string) (corev1.VolumeMount, bool) {
	for _, m := range mounts {
		if dir == m.MountPath || strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

// checkSecretFiles: each _FILE points into a Secret volume mounted in the
// sidecar, at an item the (example) Secret has.
func checkSecretFiles(t *testing.T, objs k8sObjects, pod corev1.PodSpec, sc corev1.Container, env map[string]string) {
	t.Helper()
	for _, v := range []string{"MMSIDECAR_S3_ACCESS_KEY_FILE", "MMSIDECAR_S3_SECRET_KEY_FILE"} {
		file := env[v]
		if file == "" {
			t.Errorf("%s: credentials must come from a Secret through %s", sc.Name, v)
			continue
		}
		m, ok := mountFor(sc.VolumeMounts, file)
		if !ok {
			t.Errorf("%s=%s: no volume mounted there", v, file)
			continue
		}
		var vol *corev1.Volume
		for i := range pod.Volumes {
			if pod.Volumes[i].Name == m.Name {
				vol = &pod.Volumes[i]
			}
		}
		if vol == nil || vol.Secret == nil {
			t.Errorf("%s=%s: volume %s is not a Secret volume", v, file, m.Name)
			continue
		}
		rel := strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		key := rel
		if len(vol.Secret.Items) > 0 {
			key = ""
			for _, it := range vol.Secret.Items {
				if it.Path == rel {
					key = it.Key
				}
			}
		}
		var secret *corev1.Secret
		for _, s := range objs.Secrets {
			if s.Name == vol.Secret.SecretName {
				secret = s
			}
		}
		if secret == nil {
			t.Errorf("%s: Secret %s has no example in deploy/kubernetes", v, vol.Secret.SecretName)
			continue
		}
		if _, ok := secret.StringData[key]; key == "" || !ok {
			t.Errorf("%s=%s: Secret %s has no key for it (items %v)", v, file, secret.Name, vol.Secret.Items)
		}
	}
}

// checkProbesAndPort: the listener binds the pod IP side, on the image's
// port, and probes and scrape annotations use it.
func checkProbesAndPort(t *testing.T, sts *appsv1.StatefulSet, sc corev1.Container, env map[string]string, img sidecarImage) {
	t.Helper()
	addr := env["MMSIDECAR_LISTEN_ADDR"]
	if host, _, _ := net.SplitHostPort(addr); host != "0.0.0.0" && host != "" && host != "::" {
		t.Errorf("MMSIDECAR_LISTEN_ADDR %q: probes and Prometheus reach the pod IP, so bind all interfaces", addr)
	}
	port := portOf(t, "MMSIDECAR_LISTEN_ADDR", addr)
	if port != img.ListenPort {
		t.Errorf("listen port %d differs from the image's %d", port, img.ListenPort)
	}
	resolve := func(p intstr.IntOrString) int {
		if p.Type == intstr.Int {
			return p.IntValue()
		}
		for _, cp := range sc.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort)
			}
		}
		return -1
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"startupProbe", sc.StartupProbe, "/readyz"}, {"readinessProbe", sc.ReadinessProbe, "/readyz"}, {"livenessProbe", sc.LivenessProbe, "/healthz"}} {
		switch {
		case pr.probe == nil || pr.probe.HTTPGet == nil:
			t.Errorf("%s: no HTTP %s", sc.Name, pr.name)
		case pr.probe.HTTPGet.Path != pr.path:
			t.Errorf("%s: %s path %s, want %s", sc.Name, pr.name, pr.probe.HTTPGet.Path, pr.path)
		case resolve(pr.probe.HTTPGet.Port) != port:
			t.Errorf("%s: %s port %v is not the listen port %d", sc.Name, pr.name, pr.probe.HTTPGet.Port.String(), port)
		}
	}
	if sc.StartupProbe != nil {
		if budget := time.Duration(sc.StartupProbe.PeriodSeconds*sc.StartupProbe.FailureThreshold) * time.Second; budget < 5*time.Minute {
			t.Errorf("startupProbe gives the sidecar only %s to become ready (the store may be away at start)", budget)
		}
	}
	ann := sts.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(port) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod scrape annotations %v do not point at :%d/metrics", ann, port)
	}
}

// checkSecurity: the sidecar runs as the image's user, read-only, without
// capabilities; the volume is group-accessible to that group.
func checkSecurity(t *testing.T, pod corev1.PodSpec, sc corev1.Container, img sidecarImage) {
	t.Helper()
	s := sc.SecurityContext
	switch {
	case s == nil:
		t.Fatalf("%s: no securityContext", sc.Name)
	case s.RunAsUser == nil || *s.RunAsUser != int64(img.UID) || s.RunAsGroup == nil || *s.RunAsGroup != int64(img.GID):
		t.Errorf("%s: runAsUser/runAsGroup must be the image's %d:%d", sc.Name, img.UID, img.GID)
	case s.RunAsNonRoot == nil || !*s.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot must be true", sc.Name)
	case s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem:
		t.Errorf("%s: readOnlyRootFilesystem must be true", sc.Name)
	case s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation must be false", sc.Name)
	case s.Capabilities == nil || len(s.Capabilities.Drop) != 1 || s.Capabilities.Drop[0] != "ALL" || len(s.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities must drop ALL and add none", sc.Name)
	}
	if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != int64(img.GID) {
		t.Errorf("pod fsGroup must be the image's group %d (the queue volume and Secret files become group-accessible)", img.GID)
	}
}

// checkDrainHook: Mailman's preStop runs deploy/hooks/drain.sh (from the
// ConfigMap) against the sidecar's loopback port, the ConfigMap matches the
// file, and the grace period covers the drain and both stops.
func checkDrainHook(t *testing.T, objs k8sObjects, pod corev1.PodSpec, mm corev1.Container, img sidecarImage) {
	t.Helper()
	if mm.LivenessProbe != nil {
		t.Errorf("%s: a livenessProbe restart would run the preStop drain and leave the sidecar draining", mm.Name)
	}
	if mm.Lifecycle == nil || mm.Lifecycle.PreStop == nil || mm.Lifecycle.PreStop.Exec == nil {
		t.Fatalf("%s: no exec preStop hook", mm.Name)
	}
	cmd := mm.Lifecycle.PreStop.Exec.Command
	script := cmd[len(cmd)-1]
	m, ok := mountFor(mm.VolumeMounts, script)
	if !ok || path.Base(script) != "drain.sh" {
		t.Fatalf("%s: preStop %v does not run drain.sh from a mounted volume", mm.Name, cmd)
	}
	var cmName string
	for _, v := range pod.Volumes {
		if v.Name == m.Name && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	want := readRepoFile(t, "deploy/hooks/drain.sh")
	var found bool
	for _, cm := range objs.ConfigMaps {
		if cm.Name == cmName {
			found = true
			if cm.Data["drain.sh"] != want {
				t.Errorf("ConfigMap %s drain.sh differs from deploy/hooks/drain.sh: regenerate it", cm.Name)
			}
		}
	}
	if !found {
		t.Errorf("preStop script volume %s is not a ConfigMap from deploy/kubernetes", m.Name)
	}
	env := map[string]string{}
	for _, e := range mm.Env {
		env[e.Name] = e.Value
	}
	u := env["DRAIN_HOOK_URL"]
	if !strings.HasPrefix(u, "http://127.0.0.1:") && !strings.HasPrefix(u, "http://localhost:") {
		t.Errorf("%s: DRAIN_HOOK_URL %q must be the sidecar on the pod's loopback", mm.Name, u)
	} else if portOf(t, "DRAIN_HOOK_URL", strings.TrimPrefix(u, "http://")) != img.ListenPort {
		t.Errorf("%s: DRAIN_HOOK_URL %q is not the listen port %d", mm.Name, u, img.ListenPort)
	}
	deadline, err := strconv.Atoi(env["DRAIN_HOOK_DEADLINE"])
	if err != nil {
		t.Fatalf("%s: DRAIN_HOOK_DEADLINE %q: %v", mm.Name, env["DRAIN_HOOK_DEADLINE"], err)
	}
	// Mailman's stop and the sidecar's flush and fence come after the drain.
	const stops = 60
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < int64(deadline+stops) {
		t.Errorf("terminationGracePeriodSeconds must be at least DRAIN_HOOK_DEADLINE (%d) + %d s", deadline, stops)
	}
}

// TestKubernetesSelectors checks that the Services, the PDB and the
// NetworkPolicy select the StatefulSet's pods, and that the listen port is
// open only to chosen peers.
func TestKubernetesSelectors(t *testing.T) {
	objs := loadKubernetes(t, repoPath(t, "deploy", "kubernetes"))
	img := imageFacts(t)
	sts := objs.StatefulSets[0]
	podLabels := labels.Set(sts.Spec.Template.Labels)
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("StatefulSet selector %v does not match its template labels %v (%v)", sts.Spec.Selector, podLabels, err)
	}
	var governing bool
	for _, s := range objs.Services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s does not select the Mailman pods", s.Name)
		}
		if s.Name == sts.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone {
			governing = true
		}
	}
	if !governing {
		t.Errorf("serviceName %q is not a headless Service in deploy/kubernetes", sts.Spec.ServiceName)
	}
	pdb := objs.PDBs[0]
	if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(podLabels) {
		t.Errorf("PodDisruptionBudget %s does not select the Mailman pods (%v)", pdb.Name, err)
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Errorf("PodDisruptionBudget %s sets neither maxUnavailable nor minAvailable", pdb.Name)
	}
	np := objs.Policies[0]
	if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil || !sel.Matches(podLabels) {
		t.Errorf("NetworkPolicy %s does not select the Mailman pods (%v)", np.Name, err)
	}
	var metricsRule bool
	for _, r := range np.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port == nil || p.Port.IntValue() != img.ListenPort {
				continue
			}
			metricsRule = true
			if len(r.From) == 0 {
				t.Errorf("NetworkPolicy %s opens port %d (with POST /drain) to everyone", np.Name, img.ListenPort)
			}
			for _, f := range r.From {
				if f.NamespaceSelector == nil && f.PodSelector != nil && len(f.PodSelector.MatchLabels) == 0 && len(f.PodSelector.MatchExpressions) == 0 {
					t.Errorf("NetworkPolicy %s opens port %d (with POST /drain) to every pod in the namespace", np.Name, img.ListenPort)
				}
			}
		}
	}
	if !metricsRule {
		t.Errorf("NetworkPolicy %s has no rule for the listen port %d: Prometheus cannot scrape", np.Name, img.ListenPort)
	}
}
