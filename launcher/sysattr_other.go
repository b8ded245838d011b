//go:build !linux

package launcher

import "syscall"

// sysProcAttr puts the kernel in its own process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// NotDumpable does nothing outside Linux.
func NotDumpable() error { return nil }
