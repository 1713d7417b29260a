package dbserver

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// panickyBody gives n bytes of JSON, then panics, as a bug reading or
// decoding a body would.
type panickyBody struct{ r io.Reader }

type bodyPanic struct{}

func (b *panickyBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		panic(bodyPanic{})
	}
	return n, err
}

func (b *panickyBody) Close() error { return nil }

// TestPanicGivesBackBodyRoom: a panic while a large body is read (the
// server recovers it and drops the connection) gives the body's room back,
// with a length or chunked, and the panic goes on to the server.
func TestPanicGivesBackBodyRoom(t *testing.T) {
	const maxBody = 1 << 20
	// A leaked share leaves the next request waiting: not for long.
	h := notReadyInstance(Config{MaxBodyBytes: maxBody, RequestTimeout: 2 * time.Second}).Handler().(*apiHandler)
	for _, c := range []struct {
		path   string
		budget *bodyBudget
		length int64
	}{
		{"/v1/execute", h.bodies, maxBody}, {"/v1/execute", h.bodies, -1},
		{"/v1/query", h.queryBodies, maxBody}, {"/v1/query", h.queryBodies, -1},
	} {
		req := httptest.NewRequest(http.MethodPost, c.path, nil)
		req.Body = &panickyBody{r: bytes.NewReader(bytes.Repeat([]byte(" "), 2*smallBody))}
		req.ContentLength = c.length
		func() {
			defer func() {
				if p := recover(); p != (bodyPanic{}) {
					t.Errorf("%s, length %d: recovered %v, want the body's panic", c.path, c.length, p)
				}
			}()
			h.ServeHTTP(httptest.NewRecorder(), req)
		}()
		if used, waiting := c.budget.inUse(); used != 0 || waiting != 0 {
			t.Errorf("%s, length %d: after a panic reading the body, the budget holds %d bytes, %d waiting", c.path, c.length, used, waiting)
		}
	}
}
