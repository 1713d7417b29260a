package procstat

import (
	"os"
	"syscall"
)

// allocated is the bytes a file's blocks take (st_blocks is in 512-byte
// units whatever the file system's block size).
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
