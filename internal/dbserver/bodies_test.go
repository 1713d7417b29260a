package dbserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/instance"
	"github.com/borealis-db/borealis/internal/wait"
)

// notReadyInstance serves the API without a database: a request is read,
// decoded and checked, then refused as not_ready. What it costs is what
// reading and decoding cost.
func notReadyInstance(cfg Config) *Instance {
	cfg.Volume, cfg.Control = "v", "127.0.0.1:1"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := cfg.defaults(); err != nil {
		panic(err)
	}
	w, err := instance.NewWriter(writerConfig(cfg, noControl{}))
	if err != nil {
		panic(err)
	}
	return &Instance{cfg: cfg, log: cfg.Logger, w: w, role: writerRole{w}}
}

// decodeCost serves body to h and returns the reply's status, the bytes
// the Go heap allocated meanwhile, and the most it held in live and not yet
// collected objects above what it held before (sampled every millisecond).
func decodeCost(t *testing.T, h http.Handler, body []byte) (status int, alloc, peak uint64) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/v1/execute", bytes.NewReader(body))
	rec := httptest.NewRecorder()
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := heap()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var most uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			most = max(most, heap())
			select {
			case <-stop:
				done <- max(most, heap())
				return
			case <-tick.C:
			}
		}
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	h.ServeHTTP(rec, req)
	runtime.ReadMemStats(&after)
	close(stop)
	most := <-done
	if most > base {
		peak = most - base
	}
	return rec.Code, after.TotalAlloc - before.TotalAlloc, peak
}

// TestDecodingABlobCostsLittleMoreThanItsBody: the largest blob parameter
// (a 42.7 MiB body) is read and decoded with two copies in memory, the body
// and the blob (74.7 MiB), not the copies of a JSON decoder's buffer grown
// by doubling, a RawMessage, a string and a second decoder (416 MiB
// allocated, 229 MiB at the peak). A text parameter costs the body and the
// string.
func TestDecodingABlobCostsLittleMoreThanItsBody(t *testing.T) {
	blob := make([]byte, MaxValueBytes)
	body := blobInsert(t, blob)
	h := notReadyInstance(Config{}).Handler()
	st, alloc, peak := decodeCost(t, h, body)
	if st != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d, want 503 not_ready after decoding", st)
	}
	t.Logf("a %d-byte body with a %d-byte blob: %.1f MiB allocated (%.2f× the body), heap peak +%.1f MiB", len(body), len(blob), float64(alloc)/(1<<20), float64(alloc)/float64(len(body)), float64(peak)/(1<<20))
	// The body, the blob, and a little for everything else.
	if limit := uint64(len(body)+len(blob)) + 4<<20; alloc > limit {
		t.Errorf("decoding a %d-byte body allocated %d bytes, more than the body and its blob (%d) and 4 MiB", len(body), alloc, limit)
	}

	// A text parameter of the same body size: the body and the string.
	text := bytes.Repeat([]byte("x"), len(body)-100)
	p, _ := json.Marshal(string(text))
	b, _ := json.Marshal(ExecuteRequest{Statements: []Statement{{SQL: "INSERT INTO b(v) VALUES (?)", Params: []json.RawMessage{p}}}})
	st, alloc, peak = decodeCost(t, h, b)
	if st != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d, want 503 not_ready after decoding", st)
	}
	t.Logf("a %d-byte body with a %d-byte string: %.1f MiB allocated (%.2f× the body), heap peak +%.1f MiB", len(b), len(text), float64(alloc)/(1<<20), float64(alloc)/float64(len(b)), float64(peak)/(1<<20))
	if limit := uint64(2*len(b)) + 4<<20; alloc > limit {
		t.Fatalf("decoding a %d-byte body allocated %d bytes, more than the body and its string (%d) and 4 MiB", len(b), alloc, limit)
	}
}

// BenchmarkDecodeBlobBody: reading and decoding the largest blob parameter.
func BenchmarkDecodeBlobBody(b *testing.B) {
	p, _ := json.Marshal(map[string][]byte{"base64": make([]byte, MaxValueBytes)})
	body, _ := json.Marshal(ExecuteRequest{Statements: []Statement{{SQL: "INSERT INTO b(v) VALUES (?)", Params: []json.RawMessage{p}}}})
	h := notReadyInstance(Config{}).Handler()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/execute", bytes.NewReader(body)))
		if rec.Code != http.StatusServiceUnavailable {
			b.Fatalf("HTTP %d %s", rec.Code, rec.Body)
		}
	}
}

// upload is a request whose body the test sends when it likes.
type upload struct {
	body  *io.PipeWriter
	reply chan uploadReply
}

type uploadReply struct {
	status int
	code   string
	msg    string
	header http.Header
	err    error
}

// startUpload posts to url a body of size bytes (-1: sent chunked, without
// a length) that arrives only as the test writes it.
func startUpload(t *testing.T, url string, size int64) *upload {
	t.Helper()
	return startUploadTo(t, url, "/v1/execute", size)
}

// startUploadTo is startUpload to path.
func startUploadTo(t *testing.T, url, path string, size int64) *upload {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, url+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	u := &upload{body: pw, reply: make(chan uploadReply, 1)}
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			u.reply <- uploadReply{err: err}
			return
		}
		defer resp.Body.Close()
		var out ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&out)
		u.reply <- uploadReply{status: resp.StatusCode, code: out.Error.Code, msg: out.Error.Message, header: resp.Header, err: err}
	}()
	t.Cleanup(func() { pw.CloseWithError(errors.New("test over")) })
	return u
}

// answered returns the reply, or fails t if there is none within a minute.
func (u *upload) answered(t *testing.T) uploadReply {
	t.Helper()
	select {
	case r := <-u.reply:
		return r
	case <-time.After(time.Minute):
		t.Fatal("no reply within a minute")
		return uploadReply{}
	}
}

// insertBody is an /v1/execute body of exactly size bytes.
func insertBody(t *testing.T, size int) []byte {
	t.Helper()
	b := []byte(js(ExecuteRequest{Statements: []Statement{{SQL: "INSERT INTO t(v) VALUES (?)", Params: raw(`""`)}}}))
	pad := size - len(b)
	if pad < 0 {
		t.Fatalf("a body of %d bytes cannot hold an insert", size)
	}
	return bytes.Replace(b, []byte(`""`), []byte(`"`+strings.Repeat("x", pad)+`"`), 1)
}

// TestBodiesWaitForRoom: the large request bodies /v1/execute reads and
// decodes at once add up to at most its share of the budget,
// BodyBudgetBodies-QueryBodyBudgetBodies times the body cap. Uploads of the
// largest body, sent slowly, hold all of it; one more waits, unanswered,
// until one of them ends, and is then read and answered. A large body sent
// without a length holds the cap until it is read, then its size. A body
// announced over the cap is refused without taking any.
func TestBodiesWaitForRoom(t *testing.T) {
	const maxBody = 1 << 20
	h := notReadyInstance(Config{MaxBodyBytes: maxBody, RequestTimeout: 5 * time.Minute}).Handler().(*apiHandler)
	srv := httptest.NewServer(h)
	// Before the uploads' cleanups, which end the requests it waits for.
	t.Cleanup(srv.Close)
	budget := func(used int64, waiting int) func() bool {
		return func() bool {
			u, w := h.bodies.inUse()
			return u == used && w == waiting
		}
	}

	const share = BodyBudgetBodies - QueryBodyBudgetBodies
	var slow []*upload
	for range share {
		u := startUpload(t, srv.URL, maxBody)
		if _, err := u.body.Write([]byte(`{"statements": [`)); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, u)
	}
	wait.For(t, 10*time.Second, "the slow uploads to hold the whole budget", budget(share*maxBody, 0))

	body := insertBody(t, maxBody)
	fifth := startUpload(t, srv.URL, int64(len(body)))
	go func() { fifth.body.Write(body); fifth.body.Close() }()
	wait.For(t, 10*time.Second, "the fifth request to wait for room", budget(share*maxBody, 1))
	select {
	case r := <-fifth.reply:
		t.Fatalf("the fifth request was answered while the budget was full: %+v", r)
	default:
	}

	// One slow upload fails; its room goes to the fifth request, which is
	// read, decoded and refused only because there is no database.
	slow[0].body.CloseWithError(errors.New("client gave up"))
	if r := fifth.answered(t); r.err != nil || r.code != CodeNotReady {
		t.Fatalf("the fifth request, once it had room: %+v; want not_ready, after reading its body", r)
	}
	for _, u := range slow[1:] {
		u.body.CloseWithError(errors.New("client gave up"))
		u.answered(t)
	}
	wait.For(t, 10*time.Second, "the budget to be given back", budget(0, 0))

	// Chunked: nothing for its first smallBody bytes, then the cap while
	// it is read, nothing once answered.
	chunked := startUpload(t, srv.URL, -1)
	large := insertBody(t, smallBody+100)
	if _, err := chunked.body.Write(large[:smallBody]); err != nil {
		t.Fatal(err)
	}
	if used, _ := h.bodies.inUse(); used != 0 {
		t.Fatalf("a chunked body's first %d bytes took %d bytes of the budget", smallBody, used)
	}
	if _, err := chunked.body.Write(large[smallBody : smallBody+50]); err != nil {
		t.Fatal(err)
	}
	wait.For(t, 10*time.Second, "a large chunked body to hold the cap while it is read", budget(maxBody, 0))
	chunked.body.Write(large[smallBody+50:])
	chunked.body.Close()
	if r := chunked.answered(t); r.code != CodeNotReady {
		t.Fatalf("chunked request: %+v; want not_ready", r)
	}
	wait.For(t, 10*time.Second, "the budget to be given back", budget(0, 0))

	// Over the cap by its length: refused unread.
	over := startUpload(t, srv.URL, maxBody+1)
	if r := over.answered(t); r.status != http.StatusRequestEntityTooLarge || r.code != CodeBodyTooLarge {
		t.Fatalf("a body announced over the cap: %+v; want 413 body_too_large", r)
	}
	if used, waiting := h.bodies.inUse(); used != 0 || waiting != 0 {
		t.Fatalf("after refusing a body over the cap: %d bytes held, %d waiting", used, waiting)
	}
}

// TestBodiesBusy: a request that finds no room for its large body within
// the request timeout is answered 503 busy, saying why and what to do, with
// a Retry-After; once there is room, requests are read again. A body that
// stops arriving fails with timeout and gives its room back.
func TestBodiesBusy(t *testing.T) {
	const maxBody = 1 << 20
	h := notReadyInstance(Config{MaxBodyBytes: maxBody, RequestTimeout: 300 * time.Millisecond}).Handler().(*apiHandler)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	// Held as requests in flight would hold it.
	if err := h.queryBodies.acquire(context.Background(), h.queryBodies.size); err != nil {
		t.Fatal(err)
	}
	largeQuery := query("SELECT '" + strings.Repeat("x", smallBody) + "'")
	resp, err := http.Post(srv.URL+"/v1/query", "application/json", strings.NewReader(largeQuery))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	checkErr(t, resp.StatusCode, b, resp.Header, http.StatusServiceUnavailable, CodeBusy, "1048576 bytes, 1MiB", "4 times", "--max-body 1MiB",
		fmt.Sprintf("(%d bytes, 64.0KiB)", len(largeQuery)), "request timeout", "retry")
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("busy reply without Retry-After")
	}
	h.queryBodies.release(h.queryBodies.size)
	resp, err = http.Post(srv.URL+"/v1/query", "application/json", strings.NewReader(largeQuery))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	checkErr(t, resp.StatusCode, b, resp.Header, http.StatusServiceUnavailable, CodeNotReady)

	// A body that stops arriving holds its room only until the request
	// timeout.
	slow := startUpload(t, srv.URL, maxBody)
	if _, err := slow.body.Write([]byte(`{"sql": "`)); err != nil {
		t.Fatal(err)
	}
	if r := slow.answered(t); r.code != CodeTimeout || !strings.Contains(r.msg, "9 of its 1048576 bytes") {
		t.Fatalf("a body that stopped arriving: %+v; want timeout, saying how much arrived", r)
	}
	wait.For(t, 10*time.Second, "the slow body's room to be given back", func() bool {
		used, _ := h.bodies.inUse()
		return used == 0
	})
}

// TestBodyBudgetOrder: room goes to waiters first come first served, so a
// large body is not starved by later ones, however small; a waiter whose
// request ends gives up its place.
func TestBodyBudgetOrder(t *testing.T) {
	const size = 10 << 20
	b := newBodyBudget(size)
	ctx := context.Background()
	if err := b.acquire(ctx, 8<<20); err != nil {
		t.Fatal(err)
	}
	granted := make(chan string, 4)
	waitFor := func(name string, n int64, ctx context.Context) {
		go func() {
			if err := b.acquire(ctx, n); err != nil {
				granted <- name + ": " + err.Error()
				return
			}
			granted <- name
		}()
	}
	waiting := func(n int) func() bool {
		return func() bool { _, w := b.inUse(); return w == n }
	}
	waitFor("large", 6<<20, ctx)
	wait.For(t, 10*time.Second, "the large body to wait", waiting(1))
	// 1 MiB would fit (8 + 1 <= 10), but the large body came first.
	waitFor("medium", 1<<20, ctx)
	wait.For(t, 10*time.Second, "the medium body to wait behind it", waiting(2))
	// A waiter whose request ends leaves the queue.
	cctx, cancel := context.WithCancelCause(ctx)
	waitFor("abandoned", 3<<20, cctx)
	wait.For(t, 10*time.Second, "the third body to wait", waiting(3))
	cancel(errors.New("client gone"))
	if got := <-granted; got != "abandoned: client gone" {
		t.Fatalf("an abandoned waiter: %q", got)
	}
	// Room for the large body alone: 4 + 6 = 10.
	b.release(4 << 20)
	if got := <-granted; got != "large" {
		t.Fatalf("granted %q, want the large body, the first waiter", got)
	}
	wait.For(t, 10*time.Second, "the medium body to wait for room", waiting(1))
	b.release(4 << 20)
	if got := <-granted; got != "medium" {
		t.Fatalf("granted %q, want the medium body", got)
	}
	if used, w := b.inUse(); used != 7<<20 || w != 0 {
		t.Fatalf("in use %d with %d waiting; want %d, none", used, w, 7<<20)
	}
}

// BenchmarkTwentyBlobClients: twenty clients send the largest blob at once
// (the review's case); it reports the most the heap held, live or not yet
// collected, above what it held before. The body budget bounds it however
// many clients there are: 4.4 GiB without it, about 500 MiB with it (four
// bodies and their blobs at a time, 300 MiB live, and garbage not yet
// collected).
//
//	go test ./internal/dbserver -run XXX -bench TwentyBlobClients -benchtime 1x
func BenchmarkTwentyBlobClients(b *testing.B) {
	p, _ := json.Marshal(map[string][]byte{"base64": make([]byte, MaxValueBytes)})
	body, _ := json.Marshal(ExecuteRequest{Statements: []Statement{{SQL: "INSERT INTO b(v) VALUES (?)", Params: []json.RawMessage{p}}}})
	srv := httptest.NewServer(notReadyInstance(Config{}).Handler())
	defer srv.Close()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	var peak uint64
	for b.Loop() {
		runtime.GC()
		base := heap()
		stop := make(chan struct{})
		done := make(chan uint64)
		go func() {
			var most uint64
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				most = max(most, heap())
				select {
				case <-stop:
					done <- most
					return
				case <-tick.C:
				}
			}
		}()
		errs := make(chan error, 20)
		for range 20 {
			go func() {
				resp, err := http.Post(srv.URL+"/v1/execute", "application/json", bytes.NewReader(body))
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusServiceUnavailable {
						err = errors.New(resp.Status)
					}
				}
				errs <- err
			}()
		}
		for range 20 {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		close(stop)
		peak = max(peak, <-done-base)
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
}
