package launcher

import "syscall"

// sysProcAttr puts the kernel in its own process group and has Linux kill
// it if the launcher dies without cleaning up (SIGKILL, OOM), so that a
// kernel never outlives its launcher.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
