package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// cliOK runs the binary and fails the test unless it exits 0.
func cliOK(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runCLI(t, "", args...)
	if code != 0 {
		t.Fatalf("borealis %v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

// volumeNames is `borealis volume list --json`, as names.
func volumeNames(t *testing.T, dir string) []string {
	t.Helper()
	out := cliOK(t, "volume", "list", "--json", "--dir", dir)
	var list struct {
		Volumes []struct {
			Name     string `json:"name"`
			ID       uint64 `json:"id"`
			PageSize uint32 `json:"page_size"`
			PGCount  uint32 `json:"pg_count"`
		} `json:"volumes"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("volume list --json printed %q: %v", out, err)
	}
	var names []string
	for _, v := range list.Volumes {
		if v.ID == 0 || v.PageSize == 0 || v.PGCount == 0 {
			t.Fatalf("volume list --json: %s", out)
		}
		names = append(names, v.Name)
	}
	return names
}

// segment0 asks the storage node c about its segment of PG 0 of volume
// vol: its info if it hosts one, else the reason it gave (PG_NOT_HOSTED, or
// VOLUME_DELETED once it dropped the volume); err for any other answer.
func segment0(c pb.StorageClient, vol uint64) (*pb.SegmentInfoResponse, pb.Reason, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := c.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: vol, Pg: 0})
	if err == nil {
		return info, pb.Reason_REASON_UNSPECIFIED, nil
	}
	if r := reasonOf(err); r == pb.Reason_PG_NOT_HOSTED || r == pb.Reason_VOLUME_DELETED {
		return nil, r, nil
	}
	return nil, pb.Reason_REASON_UNSPECIFIED, err
}

// dropped says whether the node c dropped volume vol: it answers
// VOLUME_DELETED for it, not PG_NOT_HOSTED (a PG never written).
func dropped(c pb.StorageClient, vol uint64) bool {
	_, r, err := segment0(c, vol)
	return err == nil && r == pb.Reason_VOLUME_DELETED
}

// TestVolumeDelete runs `borealis volume` on a real `up` cluster: list
// --json; delete refused for the volume `up`'s writer holds and for one that
// does not exist; a volume written to on every node (each segment carries
// the volume's incarnation) is deleted, gone from the list, and its
// segments leave every storage node, one that was down during the delete
// included, once it is back, which from then on answer VOLUME_DELETED for
// it; `bench commit --cluster`
// leaves no volume behind and `bench sql --cluster` no table, unless --keep.
func TestVolumeDelete(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	u := startUp(t, dir, "--base-port", fmt.Sprint(freeBasePort(t)))
	f := u.waitReady()
	ctl := controlClient(t, f)

	if got := volumeNames(t, dir); !slices.Equal(got, []string{"main"}) {
		t.Fatalf("volume list: %v, want [main]", got)
	}
	_, errOut, code := runCLI(t, "", "volume", "delete", "main", "--dir", dir)
	if code == 0 || !strings.Contains(errOut, "held by writer") {
		t.Fatalf("delete of the volume up's writer holds: exit %d, %q; want a refusal naming the writer", code, errOut)
	}
	_, errOut, code = runCLI(t, "", "volume", "delete", "nope", "--dir", dir)
	if code == 0 || !strings.Contains(errOut, "volume nope does not exist") {
		t.Fatalf("delete of an unknown volume: exit %d, %q", code, errOut)
	}

	// A volume with data on all six nodes.
	cliOK(t, "volume", "create", "scratch", "--pg-size", "1MiB", "--dir", dir)
	if got := volumeNames(t, dir); !slices.Equal(got, []string{"main", "scratch"}) {
		t.Fatalf("volume list: %v, want [main scratch]", got)
	}
	vi, err := ctl.GetVolume(context.Background(), &pb.GetVolumeRequest{Name: "scratch"})
	if err != nil {
		t.Fatal(err)
	}
	v := volumeOn(t, ctl, "scratch")
	lsn, err := v.Commit(context.Background(), []volume.PageWrite{{Page: 1, New: image(1, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	// The commit is acknowledged by four; closing the writer before the
	// other two have it could leave them without the segment's declaration.
	wait.For(t, 20*time.Second, "all six segments to acknowledge the record", func() bool {
		scls := v.SegmentSCLs(0)
		for _, scl := range scls {
			if scl < lsn {
				return false
			}
		}
		return len(scls) == 6
	})
	v.Close()
	nodes := f.Storage()
	clients := map[string]pb.StorageClient{}
	for _, n := range nodes {
		clients[n.ID] = storageAt(t, n.Addr)
	}
	wait.For(t, 20*time.Second, "every node to hold the scratch volume", func() bool {
		for _, n := range nodes {
			if info, _, err := segment0(clients[n.ID], vi.Id); info == nil || err != nil {
				return false
			}
		}
		return true
	})
	if vi.Incarnation == 0 {
		t.Fatal("the scratch volume has no incarnation")
	}
	for _, n := range nodes {
		if info, _, _ := segment0(clients[n.ID], vi.Id); info.GetSpec().GetIncarnation() != vi.Incarnation {
			t.Fatalf("%s holds scratch's PG 0 under incarnation %x, want the volume's %x", n.ID, info.GetSpec().GetIncarnation(), vi.Incarnation)
		}
	}

	// s6 is down while the volume is deleted.
	s6 := nodes[len(nodes)-1]
	if err := syscall.Kill(s6.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "s6 to exit", func() bool { return !alive(s6.Pid) })
	out := cliOK(t, "volume", "delete", "scratch", "--dir", dir)
	if !strings.Contains(out, "volume scratch deleted") {
		t.Fatalf("volume delete printed %q", out)
	}
	if got := volumeNames(t, dir); !slices.Equal(got, []string{"main"}) {
		t.Fatalf("volume list after the delete: %v, want [main]", got)
	}
	_, errOut, code = runCLI(t, "", "volume", "delete", "scratch", "--dir", dir)
	if code == 0 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("second delete: exit %d, %q", code, errOut)
	}
	wait.For(t, 20*time.Second, "the live nodes to drop the deleted volume", func() bool {
		for _, n := range nodes[:len(nodes)-1] {
			if !dropped(clients[n.ID], vi.Id) {
				return false
			}
		}
		return true
	})
	cliOK(t, "restart", "s6", "--dir", dir)
	wait.For(t, 30*time.Second, "s6, back, to drop the volume deleted while it was down", func() bool {
		return dropped(clients[s6.ID], vi.Id)
	})
	// main is untouched: its writer still commits.
	c := &sqlCluster{u: u, f: f, db: writerClient(t, f), dir: dir}
	c.exec(t, false, sqlclient.Statement{SQL: "CREATE TABLE after_delete(k INTEGER PRIMARY KEY)"}, sqlclient.Statement{SQL: "INSERT INTO after_delete VALUES (1)"})
	if n := c.one(t, "SELECT count(*) FROM after_delete"); n != 1 {
		t.Fatalf("main after the delete: %d rows", n)
	}

	// bench commit --cluster: its volumes are gone when it ends...
	clusterFile := filepath.Join(dir, "cluster.json")
	benchJSON := func(args ...string) (names []string, kept bool) {
		t.Helper()
		out := cliOK(t, append([]string{"bench", "commit", "--cluster", clusterFile, "--json", "--duration", "200ms", "--committers", "1,2"}, args...)...)
		var rep struct {
			Volumes     []string `json:"volumes"`
			VolumesKept bool     `json:"volumes_kept"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("bench commit --json printed %q: %v", out, err)
		}
		return rep.Volumes, rep.VolumesKept
	}
	names, kept := benchJSON()
	if len(names) != 2 || kept || !strings.HasPrefix(names[0], "bench-") {
		t.Fatalf("bench commit reported volumes %v, kept %v", names, kept)
	}
	if got := volumeNames(t, dir); !slices.Equal(got, []string{"main"}) {
		t.Fatalf("volume list after bench commit: %v, want [main]", got)
	}
	// ...unless --keep, and then volume delete removes them.
	names, kept = benchJSON("--keep")
	if len(names) != 2 || !kept {
		t.Fatalf("bench commit --keep reported volumes %v, kept %v", names, kept)
	}
	want := append(slices.Clone(names), "main") // by name
	if got := volumeNames(t, dir); !slices.Equal(got, want) {
		t.Fatalf("volume list after bench commit --keep: %v, want %v", got, want)
	}
	for _, n := range names {
		cliOK(t, "volume", "delete", n, "--dir", dir)
	}
	if got := volumeNames(t, dir); !slices.Equal(got, []string{"main"}) {
		t.Fatalf("volume list after deleting the kept volumes: %v, want [main]", got)
	}

	// bench sql --cluster drops its table from the writer's volume, unless
	// --keep.
	benchTables := func() int64 {
		return c.one(t, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND (name = 'bench' OR name LIKE 'bench\_%' ESCAPE '\')`)
	}
	benchSQL := func(args ...string) (table string, dropped bool) {
		t.Helper()
		out := cliOK(t, append([]string{"bench", "sql", "--cluster", clusterFile, "--json", "--duration", "200ms", "--clients", "1"}, args...)...)
		var rep struct {
			Table   string `json:"table"`
			Dropped bool   `json:"table_dropped"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("bench sql --json printed %q: %v", out, err)
		}
		return rep.Table, rep.Dropped
	}
	if table, dropped := benchSQL(); table != "bench" || !dropped || benchTables() != 0 {
		t.Fatalf("bench sql: table %q, dropped %v, %d bench tables left", table, dropped, benchTables())
	}
	if table, dropped := benchSQL("--keep"); table != "bench" || dropped || benchTables() != 1 {
		t.Fatalf("bench sql --keep: table %q, dropped %v, %d bench tables left", table, dropped, benchTables())
	}
}
