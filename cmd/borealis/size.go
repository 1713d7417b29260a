package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/borealis-db/borealis/internal/dbserver"
)

// parseSize reads sizes such as 4096, 1MiB, 64MiB or 10GiB (binary units;
// KB/MB/GB are taken as the same binary units, as storage people expect).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   uint64
	}{
		{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
		{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
		{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1},
	}
	mult := uint64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("size %q: want a positive whole number with an optional unit, such as 1MiB, 64MiB or 10GiB", s)
	}
	if n > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// formatSize words a size as the flags take it ("64MiB"), with the
// formatter the database server's messages use (one for both).
func formatSize(n uint64) string { return dbserver.FormatSize(n) }
