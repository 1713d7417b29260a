package router

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
)

// Error codes the router answers with itself, in the SQL API's error body
// ({"error": {"code", "message"}}). Those the SQL API also has mean the
// same there.
const (
	// CodeNoWriter: the volume has no writer in the catalog (503).
	CodeNoWriter = "no_writer"
	// CodeNotWriter: the reader endpoint refuses anything but queries (409).
	CodeNotWriter = "not_writer"
	// CodeUnavailable: the instance the request went to could not be
	// reached, or failed before it answered a query (502).
	CodeUnavailable = "unavailable"
	// CodeOutcomeUnknown: a write reached the writer, which failed, or
	// gave up on it, before it answered (502). It may or may not have
	// been applied, and the router did not send it again.
	CodeOutcomeUnknown = "outcome_unknown"
	// CodeBadRequest: a query body the router cannot read min_lsn from
	// (400), or an unknown method on /v1/query (405).
	CodeBadRequest = "bad_request"
	// CodeBodyTooLarge: a query body above Config.MaxBodyBytes (413).
	CodeBodyTooLarge = "body_too_large"
)

// maxPeek bounds what is read of a refusal to learn its error code.
const maxPeek = 64 << 10

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, format string, args ...any) {
	writeJSON(w, status, struct {
		Error apiError `json:"error"`
	}{apiError{Code: code, Message: fmt.Sprintf(format, args...)}})
}

// errorCode returns the code of an SQL API error body, or "".
func errorCode(b []byte) string {
	code, _ := errorOf(b)
	return code
}

// errorOf returns the code and message of an SQL API error body, or "".
func errorOf(b []byte) (code, message string) {
	var e struct {
		Error *apiError `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil || e.Error == nil {
		return "", ""
	}
	return e.Error.Code, e.Error.Message
}

// body is a request body to forward: whole in buf (it can be sent again),
// or, when it was too large to buffer, a stream that can be sent once.
type body struct {
	buf    []byte
	stream io.Reader
	length int64 // of the stream; -1 unknown
}

func (b *body) replayable() bool { return b.stream == nil }

// readBody buffers r's body if it is at most ReplayBodyBytes, or returns
// it as a stream (its first bytes already read) otherwise.
func readBody(r *http.Request) (*body, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return &body{}, nil
	}
	if r.ContentLength > ReplayBodyBytes {
		return &body{stream: r.Body, length: r.ContentLength}, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, ReplayBodyBytes+1))
	if err != nil {
		return nil, err
	}
	if len(buf) > ReplayBodyBytes {
		return &body{stream: io.MultiReader(bytes.NewReader(buf), r.Body), length: r.ContentLength}, nil
	}
	return &body{buf: buf}, nil
}

// hopHeaders are the hop-by-hop headers a proxy does not forward
// (RFC 9110 §7.6.1), as net/http/httputil.ReverseProxy drops them.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func dropHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

func baseURL(endpoint string) string {
	base := strings.TrimRight(endpoint, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return base
}

// send forwards req, with b as its body, to the instance at endpoint, under
// ctx (req's context, or one that ends with it); the response's body reads
// under ctx too. wrote tells whether the whole request went out: when it
// did not, the instance cannot have acted on it, and it is safe to send
// again elsewhere.
func (r *Router) send(ctx context.Context, req *http.Request, endpoint string, b *body) (resp *http.Response, wrote bool, err error) {
	var sent atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err == nil {
				sent.Store(true)
			}
		},
	})
	var rd io.Reader = http.NoBody
	switch {
	case b.stream != nil:
		rd = b.stream
	case len(b.buf) > 0:
		rd = bytes.NewReader(b.buf)
	}
	out, err := http.NewRequestWithContext(ctx, req.Method, baseURL(endpoint)+req.URL.RequestURI(), rd)
	if err != nil {
		return nil, false, err
	}
	if b.stream != nil {
		out.ContentLength = b.length // -1 (chunked) when unknown
	}
	out.Header = req.Header.Clone()
	if out.Header == nil {
		out.Header = http.Header{}
	}
	dropHopHeaders(out.Header)
	if host, _, err := net.SplitHostPort(req.RemoteAddr); err == nil {
		if prior := out.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		out.Header.Set("X-Forwarded-For", host)
	}
	resp, err = r.transport.RoundTrip(out)
	return resp, sent.Load(), err
}

// relay writes resp to w as the answer of the instance id, and closes its
// body. It returns the error that cut the body short, reading it (the
// instance failed, or the attempt's context ended) or writing it (the
// client went away): then the answer is incomplete, and the caller must
// abort the response (abortResponse) lest it end as if it were whole.
func relay(w http.ResponseWriter, resp *http.Response, id string) error {
	defer resp.Body.Close()
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	dropHopHeaders(h)
	h.Set(InstanceHeader, id)
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	return err
}

// abortResponse ends the handler's response by breaking its connection (or
// resetting its HTTP/2 stream), once its headers and perhaps part of its
// body went out: the client sees an error, not an answer cut short that
// looks whole, as a chunked body ended by the handler's return would.
func abortResponse() {
	panic(http.ErrAbortHandler)
}

// peekError reads the start of resp's body (a refusal: small) and returns
// its error code and message; resp's body still reads from its first byte.
func peekError(resp *http.Response) (code, message string) {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxPeek))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), resp.Body), resp.Body}
	return errorOf(b)
}

// discard drains (a bounded amount of) resp's body, so that its connection
// is reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxPeek))
	resp.Body.Close()
}

// clientGone says whether req's client went away (or its server is
// shutting down): then a failed forward is nobody's failure, and nobody
// reads the answer.
func clientGone(req *http.Request) bool {
	return req.Context().Err() != nil
}
