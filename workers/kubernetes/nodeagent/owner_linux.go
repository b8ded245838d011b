package nodeagent

import (
	"io/fs"
	"syscall"
)

func statOwner(info fs.FileInfo) ([2]int, bool) {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return [2]int{int(st.Uid), int(st.Gid)}, true
	}
	return [2]int{}, false
}
