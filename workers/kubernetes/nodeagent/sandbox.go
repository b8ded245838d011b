package nodeagent

import (
	"os"
	"os/exec"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// sandboxScript runs as root inside the pod's new pid and mount
// namespaces (made by unshare, which also mounted a /proc of the pod's own
// pids): it gives the pod a private /tmp and /dev/shm, as a container's
// own filesystem would, enters the working folder and drops to the pod's
// user. $1 uid, $2 gid, $3 setpriv's groups flag, $4 working folder, then
// the container's argv.
const sandboxScript = `set -e
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
if [ -d /dev/shm ]; then mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm; fi
uid=$1 gid=$2 groups=$3 wd=$4
shift 4
cd "$wd"
exec setpriv --reuid="$uid" --regid="$gid" "$groups" --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"`

// canSandbox reports whether host pods can get namespaces of their own:
// the agent is root and has unshare and setpriv (util-linux).
func canSandbox() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, p := range []string{"unshare", "setpriv", "mount"} {
		if _, err := exec.LookPath(p); err != nil {
			return false
		}
	}
	return true
}

// hostUser is the uid, gid and supplementary group (fsGroup, -1 for none)
// a host pod runs as: its container's or pod's runAsUser/runAsGroup, else
// root, as an image without USER would.
func hostUser(pod *corev1.Pod, c corev1.Container) (uid, gid, fsGroup int) {
	uid, gid = podUser(pod, c, Rootfs{})
	fsGroup = -1
	if sc := pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		fsGroup = int(*sc.FSGroup)
	}
	return uid, gid, fsGroup
}

// sandboxArgv wraps a host pod's argv so that it runs as a kubelet runs a
// container in the ways the kernel attack tests depend on: in a pid
// namespace of its own (it sees and signals only its own processes), with
// its own /proc, /tmp and /dev/shm (no other pod's connection files), as
// the pod's runAsUser/runAsGroup with fsGroup as its only supplementary
// group, without capabilities. The network (127.0.0.1) and the rest of the
// host's files stay shared: this is a test stand-in, not a container
// runtime.
func sandboxArgv(argv []string, uid, gid, fsGroup int, dir string) []string {
	groups := "--clear-groups"
	if fsGroup >= 0 {
		groups = "--groups=" + strconv.Itoa(fsGroup)
	}
	if dir == "" {
		dir = "/tmp"
	}
	return append([]string{"unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--",
		"sh", "-c", sandboxScript, "sh", strconv.Itoa(uid), strconv.Itoa(gid), groups, dir}, argv...)
}
