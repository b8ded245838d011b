package launcher

import "syscall"

// sysProcAttr puts the kernel in its own process group and has Linux kill
// it if the launcher dies without cleaning up (SIGKILL, OOM), so that a
// kernel never outlives its launcher.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// NotDumpable makes this process non-dumpable: its /proc files (environ,
// mem, fd) become root's, and processes of the same user can neither read
// them nor ptrace it. The launcher holds its kernel's bus credentials;
// the kernel runs as the same user and must not read them.
func NotDumpable() error {
	const prSetDumpable = 4
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0); errno != 0 {
		return errno
	}
	return nil
}
