package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podUser is the uid and gid a container of an unpacked image runs as: the
// container's or pod's runAsUser/runAsGroup, else the image's USER.
func podUser(pod *corev1.Pod, c corev1.Container, img Rootfs) (int, int) {
	uid, gid := img.UID, img.GID
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = int(*sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = int(*sc.RunAsGroup)
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = int(*sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = int(*sc.RunAsGroup)
		}
	}
	return uid, gid
}

// podRoot makes <PodsDir>/<pod uid>/root: the image's files (hard links:
// the image folder is the node's image store and stays unchanged unless a
// process writes into a file in place) plus the container's volume mounts.
func (a *Agent) podRoot(ctx context.Context, pod *corev1.Pod, c corev1.Container, img Rootfs, uid, gid int) (string, error) {
	top := filepath.Join(a.cfg.PodsDir, string(pod.UID))
	root := filepath.Join(top, "root")
	_ = os.RemoveAll(top) // a half-made root of an earlier try
	if err := linkTree(img.Dir, root); err != nil {
		return "", fmt.Errorf("image %s: %w", c.Image, err)
	}
	if err := a.writeHosts(ctx, pod, root); err != nil {
		return "", err
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			return "", fmt.Errorf("volume mount %s: no volume of that name", m.Name)
		}
		files, err := a.volumeFiles(ctx, pod, v)
		if err != nil {
			return "", fmt.Errorf("volume %s: %w", m.Name, err)
		}
		target := filepath.Join(root, filepath.FromSlash(path.Clean("/"+m.MountPath)))
		if err := os.MkdirAll(target, 0o755); err != nil {
			return "", err
		}
		sub := strings.Trim(path.Clean("/"+m.SubPath), "/")
		if sub != "" && files != nil {
			f, ok := files[sub]
			if !ok {
				return "", fmt.Errorf("volume %s has no subPath %s", m.Name, m.SubPath)
			}
			// A file subPath replaces the mount point itself.
			if err := os.Remove(target); err != nil {
				return "", err
			}
			files = map[string]volFile{"": f}
		}
		if files == nil { // emptyDir: a writable folder
			if err := os.Chmod(target, 0o777|fs.ModeSticky); err != nil {
				return "", err
			}
			continue
		}
		for rel, f := range files {
			p := filepath.Join(target, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return "", err
			}
			// Never write through a hard link into the image store.
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", err
			}
			if err := os.WriteFile(p, f.data, f.mode); err != nil {
				return "", err
			}
			// Owned by the container's user, so modes like 0400 stay readable.
			if err := os.Chown(p, uid, gid); err != nil {
				return "", err
			}
		}
	}
	return root, nil
}

type volFile struct {
	data []byte
	mode fs.FileMode
}

// volumeFiles resolves a volume to its files by relative path; nil for an
// emptyDir. Only the kinds the kernelbus chart uses are supported.
func (a *Agent) volumeFiles(ctx context.Context, pod *corev1.Pod, v corev1.Volume) (map[string]volFile, error) {
	out := map[string]volFile{}
	switch {
	case v.EmptyDir != nil:
		return nil, nil
	case v.Secret != nil:
		return out, a.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.DefaultMode, v.Secret.Optional, out)
	case v.ConfigMap != nil:
		return out, a.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.DefaultMode, v.ConfigMap.Optional, out)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			var err error
			switch {
			case s.Secret != nil:
				err = a.secretFiles(ctx, pod.Namespace, s.Secret.Name, s.Secret.Items, v.Projected.DefaultMode, s.Secret.Optional, out)
			case s.ConfigMap != nil:
				err = a.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, v.Projected.DefaultMode, s.ConfigMap.Optional, out)
			case s.ServiceAccountToken != nil:
				err = a.tokenFile(ctx, pod, s.ServiceAccountToken, out)
			case s.DownwardAPI != nil:
				err = downwardFiles(pod, s.DownwardAPI.Items, out)
			default:
				err = errors.New("a projected source the test node agent does not support")
			}
			if err != nil {
				return nil, err
			}
		}
		return out, nil
	case v.DownwardAPI != nil:
		return out, downwardFiles(pod, v.DownwardAPI.Items, out)
	}
	return nil, errors.New("a volume kind the test node agent does not support")
}

func fileMode(item, def *int32) fs.FileMode {
	switch {
	case item != nil:
		return fs.FileMode(*item) & fs.ModePerm
	case def != nil:
		return fs.FileMode(*def) & fs.ModePerm
	}
	return 0o644
}

func pick(data map[string][]byte, items []corev1.KeyToPath, def *int32, out map[string]volFile) error {
	if len(items) == 0 {
		for k, b := range data {
			out[k] = volFile{b, fileMode(nil, def)}
		}
		return nil
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("no key %q", it.Key)
		}
		out[strings.Trim(path.Clean("/"+it.Path), "/")] = volFile{b, fileMode(it.Mode, def)}
	}
	return nil
}

func (a *Agent) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, def *int32, optional *bool, out map[string]volFile) error {
	return keyFiles("secret", name, optional, func() (map[string][]byte, error) {
		s, err := a.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return s.Data, nil
	}, items, def, out)
}

func (a *Agent) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, def *int32, optional *bool, out map[string]volFile) error {
	return keyFiles("config map", name, optional, func() (map[string][]byte, error) {
		cm, err := a.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		data := map[string][]byte{}
		for k, v := range cm.Data {
			data[k] = []byte(v)
		}
		for k, v := range cm.BinaryData {
			data[k] = v
		}
		return data, nil
	}, items, def, out)
}

// keyFiles writes the keys of a secret or config map, which get reads,
// into out; an optional one that does not exist gives no files.
func keyFiles(kind, name string, optional *bool, get func() (map[string][]byte, error), items []corev1.KeyToPath, def *int32, out map[string]volFile) error {
	data, err := get()
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil
	}
	if err == nil {
		err = pick(data, items, def, out)
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", kind, name, err)
	}
	return nil
}

// tokenFile asks the API server for a token of the pod's service account
// bound to the pod, as a kubelet does for the projected token.
func (a *Agent) tokenFile(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, out map[string]volFile) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := a.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token of service account %s: %w", sa, err)
	}
	out[src.Path] = volFile{[]byte(tr.Status.Token), 0o600}
	return nil
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, out map[string]volFile) error {
	for _, it := range items {
		if it.FieldRef == nil {
			return fmt.Errorf("downward API %s: only fieldRef is supported", it.Path)
		}
		v, ok := fieldValue(pod, it.FieldRef.FieldPath)
		if !ok {
			return fmt.Errorf("downward API field %s is not supported by the test node agent", it.FieldRef.FieldPath)
		}
		out[it.Path] = volFile{[]byte(v), fileMode(it.Mode, nil)}
	}
	return nil
}

// linkTree recreates src's folders under dst and hard-links its files.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		t := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.MkdirAll(t, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(t, info.Mode()&(fs.ModePerm|fs.ModeSticky)); err != nil {
				return err
			}
			if st, ok := statOwner(info); ok {
				_ = os.Lchown(t, st[0], st[1])
			}
			return nil
		}
		if !info.Mode().IsRegular() {
			return fmt.Errorf("%s: only folders and regular files are supported", p)
		}
		return os.Link(p, t)
	})
}

// writeHosts gives the pod an /etc/hosts that stands in for cluster DNS:
// every pod of this node has the address IP, so the names of the
// namespace's Services and of its StatefulSets' pods
// (<pod>.<service>.<namespace>.svc) all resolve to it. It replaces the
// image's file, which is a hard link to the image store, rather than
// writing through it.
func (a *Agent) writeHosts(ctx context.Context, pod *corev1.Pod, root string) error {
	ns := pod.Namespace
	names := []string{"localhost", pod.Name}
	add := func(short string) {
		names = append(names, short+"."+ns+".svc", short+"."+ns+".svc.cluster.local")
	}
	svcs, err := a.client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		names = append(names, s.Name, s.Name+"."+ns)
		add(s.Name)
	}
	sets, err := a.client.AppsV1().StatefulSets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range sets.Items {
		n := 1
		if s.Spec.Replicas != nil {
			n = int(*s.Spec.Replicas)
		}
		for i := range n {
			add(fmt.Sprintf("%s-%d.%s", s.Name, i, s.Spec.ServiceName))
		}
	}
	p := filepath.Join(root, "etc", "hosts")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.WriteFile(p, []byte(IP+" "+strings.Join(names, " ")+"\n"), 0o644)
}
