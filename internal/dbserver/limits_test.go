package dbserver

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/borealis-db/borealis/internal/sqlvfs"
)

// TestDefaultBodyAdmitsTheLargestValue: the default body cap holds the
// largest value the API takes, as a base64 blob parameter, with a megabyte
// to spare for its statement; and a Config left at zero gets that cap.
func TestDefaultBodyAdmitsTheLargestValue(t *testing.T) {
	need := int64(base64.StdEncoding.EncodedLen(MaxRowBytes)) + 1<<20
	if DefaultMaxBodyBytes < need {
		t.Fatalf("DefaultMaxBodyBytes %d is below the %d bytes a %d-byte blob takes in base64 with 1 MiB of statement", DefaultMaxBodyBytes, need, MaxRowBytes)
	}
	cfg := Config{Volume: "v", Control: "127.0.0.1:1"}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBodyBytes != DefaultMaxBodyBytes {
		t.Fatalf("default MaxBodyBytes = %d, want %d", cfg.MaxBodyBytes, DefaultMaxBodyBytes)
	}
}

// TestLargestValueBody: LargestValueBody is the size of the smallest body
// that stores the largest value, and the instance takes that body with its
// cap at that size, and refuses it a byte below.
func TestLargestValueBody(t *testing.T) {
	if DefaultMaxBodyBytes < LargestValueBody() {
		t.Fatalf("DefaultMaxBodyBytes %d is below LargestValueBody %d", DefaultMaxBodyBytes, LargestValueBody())
	}
	b64 := base64.StdEncoding.EncodeToString(make([]byte, MaxValueBytes))
	body := []byte(`{"statements":[{"sql":"INSERT INTO t VALUES(?)","params":[{"base64":"` + b64 + `"}]}]}`)
	if int64(len(body)) != LargestValueBody() {
		t.Fatalf("the smallest body that stores the largest value is %d bytes; LargestValueBody says %d", len(body), LargestValueBody())
	}
	for _, tc := range []struct {
		maxBody int64
		want    int
	}{{LargestValueBody(), http.StatusServiceUnavailable}, {LargestValueBody() - 1, http.StatusRequestEntityTooLarge}} {
		h := notReadyInstance(Config{MaxBodyBytes: tc.maxBody}).Handler()
		st, _, _ := decodeCost(t, h, body)
		if st != tc.want {
			t.Errorf("--max-body %d: HTTP %d, want %d", tc.maxBody, st, tc.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		DefaultMaxBodyBytes: "48MiB", 1540 << 10: "1540KiB", 10 << 30: "10GiB", 1 << 40: "1TiB",
		44_739_243: "42.7MiB", MaxRowBytes: "32832KiB", 700: "700B", 1500: "1.5KiB", 0: "0B",
		// A byte short of a whole unit keeps its tenth: "48MiB" would look
		// exact, and parse as a flag value.
		DefaultMaxBodyBytes - 1: "48.0MiB", 1<<20 - 1: "1024.0KiB", 1<<30 + 1: "1.0GiB",
	} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// post sends a body without echoing it (these are tens of megabytes) and
// returns the status and the decoded reply.
func post(t *testing.T, ti *testInstance, path string, body []byte) (int, map[string]any) {
	t.Helper()
	resp, err := ti.Client.Post(ti.URL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s (%d bytes): %v", path, len(body), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("POST %s: reply is not JSON: %.300s", path, b)
	}
	return resp.StatusCode, out
}

func blobInsert(t *testing.T, blob []byte) []byte {
	t.Helper()
	p, err := json.Marshal(map[string]string{"base64": base64.StdEncoding.EncodeToString(blob)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ExecuteRequest{Statements: []Statement{{SQL: "INSERT INTO b(v) VALUES (?)", Params: []json.RawMessage{p}}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// errorOf is the code and message of an error reply.
func errorOf(reply map[string]any) (code, msg string) {
	e, _ := reply["error"].(map[string]any)
	code, _ = e["code"].(string)
	msg, _ = e["message"].(string)
	return code, msg
}

// TestLargestValueThroughTheAPI: with the default limits, a blob of exactly
// MaxValueBytes is stored through /v1/execute as a base64 parameter, in a
// row with another column, and reads back whole; a value over the row limit
// fits in the body but is refused as too big, naming the caps; a body over
// the cap is refused with body_too_large, naming the limit and the flag that
// sets it.
func TestLargestValueThroughTheAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("stores a 32 MiB blob on six storage nodes")
	}
	ti := startTestInstance(t, Config{}, sqlvfs.Options{})
	ti.ok(t, "/v1/execute", exec(`CREATE TABLE b(k INTEGER PRIMARY KEY, name TEXT DEFAULT 'the largest blob', v BLOB)`), nil)

	blob := make([]byte, MaxValueBytes)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	body := blobInsert(t, blob)
	t.Logf("a %d-byte blob is a %d-byte request body; the default cap is %d", len(blob), len(body), DefaultMaxBodyBytes)
	if st, reply := post(t, ti, "/v1/execute", body); st != http.StatusOK {
		t.Fatalf("insert of a %d-byte blob: HTTP %d %v", len(blob), st, reply)
	}
	at := 12_345_678
	st, reply := post(t, ti, "/v1/query", []byte(fmt.Sprintf(`{"sql": "SELECT length(v), hex(substr(v, %d, 8)) FROM b"}`, at+1)))
	rows, _ := reply["rows"].([]any)
	if st != http.StatusOK || len(rows) != 1 {
		t.Fatalf("read back: HTTP %d %v", st, reply)
	}
	row := rows[0].([]any)
	if n, _ := row[0].(float64); int(n) != MaxValueBytes || row[1] != fmt.Sprintf("%X", blob[at:at+8]) {
		t.Fatalf("read back length %v, bytes %v; want %d and %X", row[0], row[1], MaxValueBytes, blob[at:at+8])
	}

	over := blobInsert(t, append(blob, make([]byte, MaxRowBytes-MaxValueBytes+1)...))
	if int64(len(over)) > DefaultMaxBodyBytes {
		t.Fatalf("the over-cap blob's body is %d bytes, beyond the body cap: the test would not reach the value cap", len(over))
	}
	st, reply = post(t, ti, "/v1/execute", over)
	code, msg := errorOf(reply)
	if st != http.StatusBadRequest || code != CodeSQL || !strings.Contains(msg, "too big") || !strings.Contains(msg, FormatSize(MaxValueBytes)) || !strings.Contains(msg, fmt.Sprint(MaxRowBytes)) {
		t.Fatalf("a blob one byte over the row limit: HTTP %d %s %q; want sql_error naming %s and %d", st, code, msg, FormatSize(MaxValueBytes), MaxRowBytes)
	}

	huge := bytes.Repeat([]byte("x"), int(DefaultMaxBodyBytes)+1)
	st, reply = post(t, ti, "/v1/query", append(append([]byte(`{"sql": "SELECT '`), huge...), `'"}`...))
	code, msg = errorOf(reply)
	if st != http.StatusRequestEntityTooLarge || code != CodeBodyTooLarge || !strings.Contains(msg, fmt.Sprint(DefaultMaxBodyBytes)) || !strings.Contains(msg, "--max-body") {
		t.Fatalf("a body over the cap: HTTP %d %s %q; want body_too_large naming the limit and --max-body", st, code, msg)
	}
	if n := countRows(t, ti); n != 1 {
		t.Fatalf("%d rows after the refusals, want the one blob", n)
	}
}

func countRows(t *testing.T, ti *testInstance) int {
	t.Helper()
	var r QueryResponse
	ti.ok(t, "/v1/query", query(`SELECT count(*) FROM b`), &r)
	n, _ := r.Rows[0][0].(float64)
	return int(n)
}
