package deploytest

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestKubernetesPlugin checks how mailman-core.yaml installs the plugin:
// its package from a ConfigMap holding each file of deploy/mailman
// verbatim, mounted read-only into a PYTHONPATH directory, and
// mailman-extra.cfg (a verbatim copy of deploy/compose's) by subPath where
// the image's entry point reads it; readable by Mailman's user; the
// sidecar keeps the default state directory.
func TestKubernetesPlugin(t *testing.T) {
	objs := loadKubernetes(t, repoPath(t, "deploy", "kubernetes"))
	img := imageFacts(t)
	p := loadPlugin(t)
	pod := objs.StatefulSets[0].Spec.Template.Spec
	mm := pod.Containers[0]
	checkMailmanCoreImage(t, mm.Name, mm.Image)
	for _, c := range pod.InitContainers {
		if strings.Contains(c.Image, "mailman-core") && c.Image != mm.Image {
			t.Errorf("init container %s runs %s, Mailman %s: pin one release", c.Name, c.Image, mm.Image)
		}
	}
	if d := containerEnv(pod.InitContainers[sidecarIndex(t, pod)])["MMSIDECAR_STATE_DIR"]; d != "" {
		t.Errorf("the sidecar sets MMSIDECAR_STATE_DIR=%s: the plugin section would need a configuration: file", d)
	}
	var fsGroup int64 = -1
	if pod.SecurityContext != nil && pod.SecurityContext.FSGroup != nil {
		fsGroup = *pod.SecurityContext.FSGroup
	}
	mounted := func(file string) (corev1.VolumeMount, *corev1.ConfigMapVolumeSource, *corev1.ConfigMap) {
		m, ok := mountFor(mm.VolumeMounts, file)
		if !ok {
			t.Fatalf("%s: nothing mounted holds %s", mm.Name, file)
		}
		if !m.ReadOnly {
			t.Errorf("%s: mount %s at %s must be readOnly", mm.Name, m.Name, m.MountPath)
		}
		src := configMapVolume(pod, m.Name)
		if src == nil {
			t.Fatalf("%s: %s comes from volume %s, which is not a ConfigMap", mm.Name, file, m.Name)
		}
		if mode := fileMode(src, m, file); mode&0o004 == 0 && (mode&0o040 == 0 || fsGroup != int64(img.GID)) {
			t.Errorf("%s: %s has mode %#o: Mailman (%d:%d) cannot read it", mm.Name, file, mode, img.UID, img.GID)
		}
		for _, cm := range objs.ConfigMaps {
			if cm.Name == src.Name {
				return m, src, cm
			}
		}
		t.Fatalf("ConfigMap %s (for %s) is not in deploy/kubernetes", src.Name, file)
		return m, nil, nil
	}

	env := containerEnv(mm)
	var pkgDir string
	for _, d := range pythonPath(env["PYTHONPATH"]) {
		if _, ok := mountFor(mm.VolumeMounts, path.Join(d, p.Package, "__init__.py")); ok {
			pkgDir = path.Join(d, p.Package)
		}
	}
	if pkgDir == "" {
		t.Fatalf("%s: no PYTHONPATH directory (%q) has the package %s mounted", mm.Name, env["PYTHONPATH"], p.Package)
	}
	m, src, pluginCM := mounted(path.Join(pkgDir, "__init__.py"))
	for _, pr := range pluginCopyProblems(pluginCM, src, m, pkgDir, p.Files, pluginRepo) {
		t.Error(pr)
	}

	cm, cfgSrc, cfgCM := mounted(extraCfgPath)
	if cm.MountPath != extraCfgPath || cm.SubPath == "" {
		t.Errorf("%s: mount %s at %s: mount the file alone (subPath) at %s", mm.Name, cm.Name, cm.MountPath, extraCfgPath)
	}
	want := map[string]string{path.Base(extraCfgRepo): readRepoFile(t, extraCfgRepo)}
	for _, pr := range pluginCopyProblems(cfgCM, cfgSrc, cm, path.Dir(extraCfgPath), want, path.Dir(extraCfgRepo)) {
		t.Error(pr)
	}
	for _, pr := range pluginCfgProblems(cfgCM.Data[itemKey(cfgSrc, cm.SubPath)], p) {
		t.Errorf("ConfigMap %s, mailman-extra.cfg: %s", cfgCM.Name, pr)
	}

	// Nothing stale: every key of the plugin's ConfigMap is a file above.
	for k := range pluginCM.Data {
		if _, ok := p.Files[k]; !ok && (pluginCM.Name != cfgCM.Name || k != itemKey(cfgSrc, cm.SubPath)) {
			t.Errorf("ConfigMap %s has %s, which is no file of %s", pluginCM.Name, k, pluginRepo)
		}
	}
}

// configMapVolume returns the ConfigMap source of the pod's volume name.
func configMapVolume(pod corev1.PodSpec, name string) *corev1.ConfigMapVolumeSource {
	for _, v := range pod.Volumes {
		if v.Name == name {
			return v.ConfigMap
		}
	}
	return nil
}

// mountRel returns where file is inside the volume mounted by m.
func mountRel(m corev1.VolumeMount, file string) string {
	if file == m.MountPath {
		return m.SubPath
	}
	return path.Join(m.SubPath, strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/"))
}

// itemKey returns the ConfigMap key a volume shows at rel ("" if none).
func itemKey(src *corev1.ConfigMapVolumeSource, rel string) string {
	if len(src.Items) == 0 {
		if strings.Contains(rel, "/") {
			return ""
		}
		return rel
	}
	for _, it := range src.Items {
		if it.Path == rel {
			return it.Key
		}
	}
	return ""
}

// fileMode returns the mode of file in a ConfigMap volume (0644 unless
// the volume or its item says otherwise).
func fileMode(src *corev1.ConfigMapVolumeSource, m corev1.VolumeMount, file string) int32 {
	mode := int32(0o644)
	if src.DefaultMode != nil {
		mode = *src.DefaultMode
	}
	rel := mountRel(m, file)
	for _, it := range src.Items {
		if it.Path == rel && it.Mode != nil {
			mode = *it.Mode
		}
	}
	return mode
}

// pluginCopyProblems compares what the ConfigMap volume src, mounted by
// m, shows in dir with files (base name -> content, read from the
// repository directory from): every file present and verbatim, and no
// item in dir that is not one of them.
func pluginCopyProblems(cm *corev1.ConfigMap, src *corev1.ConfigMapVolumeSource, m corev1.VolumeMount, dir string, files map[string]string, from string) []string {
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		want := files[name]
		rel := mountRel(m, path.Join(dir, name))
		key := itemKey(src, rel)
		got, ok := cm.Data[key]
		switch {
		case key == "":
			problems = append(problems, fmt.Sprintf("volume of ConfigMap %s shows nothing at %s (%s): add an item", cm.Name, rel, path.Join(dir, name)))
		case !ok:
			problems = append(problems, fmt.Sprintf("ConfigMap %s has no key %s (%s)", cm.Name, key, path.Join(from, name)))
		case got != want:
			problems = append(problems, fmt.Sprintf("ConfigMap %s: %s differs from %s: copy it again", cm.Name, key, path.Join(from, name)))
		}
	}
	if m.SubPath != "" {
		return problems // one file
	}
	relDir := mountRel(m, dir)
	for _, it := range src.Items {
		if _, ok := files[path.Base(it.Path)]; !ok && path.Dir(it.Path) == relDir {
			problems = append(problems, fmt.Sprintf("ConfigMap %s: item %s (key %s) is no file the plugin has", cm.Name, it.Path, it.Key))
		}
	}
	return problems
}

// TestPluginCopyProblems shows that the copy check fails on the mistakes
// it is for: a changed byte, a file without an item, a stale item.
func TestPluginCopyProblems(t *testing.T) {
	objs := loadKubernetes(t, repoPath(t, "deploy", "kubernetes"))
	p := loadPlugin(t)
	pod := objs.StatefulSets[0].Spec.Template.Spec
	mm := pod.Containers[0]
	pkgDir := path.Join(pythonPath(containerEnv(mm)["PYTHONPATH"])[0], p.Package)
	m, ok := mountFor(mm.VolumeMounts, path.Join(pkgDir, "gate.py"))
	if !ok {
		t.Fatalf("no mount holds %s", pkgDir)
	}
	src := configMapVolume(pod, m.Name)
	var cm *corev1.ConfigMap
	for _, c := range objs.ConfigMaps {
		if src != nil && c.Name == src.Name {
			cm = c
		}
	}
	if cm == nil {
		t.Fatalf("volume %s: no ConfigMap", m.Name)
	}
	tests := []struct {
		name   string
		change func(cm *corev1.ConfigMap, src *corev1.ConfigMapVolumeSource, files map[string]string)
		want   string // "" = no problem
	}{
		{"as shipped", func(*corev1.ConfigMap, *corev1.ConfigMapVolumeSource, map[string]string) {}, ""},
		{"one byte changed", func(cm *corev1.ConfigMap, _ *corev1.ConfigMapVolumeSource, _ map[string]string) {
			cm.Data["gate.py"] = strings.Replace(cm.Data["gate.py"], "import", "imp0rt", 1)
		}, "gate.py differs"},
		{"a new file without an item", func(_ *corev1.ConfigMap, _ *corev1.ConfigMapVolumeSource, files map[string]string) {
			files["extra.py"] = "pass\n"
		}, "shows nothing at " + p.Package + "/extra.py"},
		{"a key missing", func(cm *corev1.ConfigMap, _ *corev1.ConfigMapVolumeSource, _ map[string]string) {
			delete(cm.Data, "runners.py")
		}, "no key runners.py"},
		{"a stale item", func(_ *corev1.ConfigMap, src *corev1.ConfigMapVolumeSource, _ map[string]string) {
			src.Items = append(src.Items, corev1.KeyToPath{Key: "old.py", Path: p.Package + "/old.py"})
		}, "item " + p.Package + "/old.py"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := cm.DeepCopy(), src.DeepCopy()
			files := map[string]string{}
			for k, v := range p.Files {
				files[k] = v
			}
			tc.change(c, s, files)
			got := strings.Join(pluginCopyProblems(c, s, m, pkgDir, files, pluginRepo), "; ")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("problems %q, want %q", got, tc.want)
			}
		})
	}
}
