package sqlclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Conn is one keep-alive HTTP/1.1 connection to an instance, used by one
// goroutine at a time: a load generator's client. A request costs far less
// than through net/http's Transport, which runs two goroutines per
// connection and hands each request and response between them and the
// caller. It speaks only plain HTTP; Client does the rest.
type Conn struct {
	addr, host string
	nc         net.Conn
	br         *bufio.Reader
	used       bool // a request has been answered on nc
	req, body  []byte
}

// Dial makes a Conn to endpoint (as Client.Endpoint). The connection itself
// is opened by the first request.
func Dial(endpoint string) (*Conn, error) {
	base := strings.TrimRight(endpoint, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("sqlclient: a Conn needs a plain http://host:port endpoint, not %q", endpoint)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	return &Conn{addr: addr, host: u.Host}, nil
}

// Close closes the connection.
func (c *Conn) Close() error {
	if c.nc == nil {
		return nil
	}
	err := c.nc.Close()
	c.nc = nil
	return err
}

// Execute is Client.Execute on this connection.
func (c *Conn) Execute(ctx context.Context, statements []Statement, transaction bool) ([]Result, error) {
	body, err := appendExecute(c.body[:0], statements, transaction)
	if err != nil {
		return nil, err
	}
	c.body = body
	var reply executeReply
	if err := c.do(ctx, "/v1/execute", body, false, &reply); err != nil {
		return nil, err
	}
	return reply.results(len(statements))
}

// Query is Client.Query on this connection.
func (c *Conn) Query(ctx context.Context, sql string, params ...any) (*Rows, error) {
	body, err := appendStatement(c.body[:0], Statement{SQL: sql, Params: params})
	if err != nil {
		return nil, err
	}
	c.body = body
	var reply wireRows
	if err := c.do(ctx, "/v1/query", body, true, &reply); err != nil {
		return nil, err
	}
	return reply.decode()
}

// do posts body to path and decodes a 2xx reply into reply, or returns the
// server's error. A request that could not be written whole on a
// connection that had served requests (the server closed it while it was
// idle) is sent once more on a new one: the server cannot have run it. So is
// a read-only one that got no response there at all; a write that got none
// is not, as the server may have run it before the connection went.
func (c *Conn) do(ctx context.Context, path string, body []byte, readOnly bool, reply any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		status, resp, retryable, err := c.roundTrip(ctx, path, body, readOnly)
		if err != nil {
			c.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if attempt == 0 && retryable {
				continue
			}
			return fmt.Errorf("POST %s: %w", path, err)
		}
		if status < 200 || status > 299 {
			return decodeError(status, resp)
		}
		if err := decodeJSON(resp, reply); err != nil {
			return fmt.Errorf("POST %s: bad reply: %w", path, err)
		}
		return nil
	}
}

// roundTrip sends one request and reads its response. retryable says that
// the request may be sent again (see do).
func (c *Conn) roundTrip(ctx context.Context, path string, body []byte, readOnly bool) (status int, resp []byte, retryable bool, err error) {
	if c.nc == nil {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return 0, nil, false, err
		}
		c.nc, c.used = nc, false
		if c.br == nil {
			c.br = bufio.NewReaderSize(nc, 16<<10)
		} else {
			c.br.Reset(nc)
		}
	}
	reused := c.used
	if ctx.Done() != nil {
		// The end of ctx interrupts the connection's reads and writes. The
		// connection is closed after any error, and after a request whose
		// ctx ended, so that no deadline in the past outlives its request.
		nc := c.nc
		stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			if !stop() {
				c.Close()
			}
		}()
	}
	req := append(c.req[:0], "POST "...)
	req = append(req, path...)
	req = append(req, " HTTP/1.1\r\nHost: "...)
	req = append(req, c.host...)
	req = append(req, "\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: "...)
	req = strconv.AppendInt(req, int64(len(body)), 10)
	req = append(req, "\r\n\r\n"...)
	req = append(req, body...)
	c.req = req
	if _, err := c.nc.Write(req); err != nil {
		return 0, nil, reused, err
	}
	status, resp, closeAfter, err := c.readResponse()
	if err != nil {
		// Nothing at all came back on a connection that had served
		// requests: the server closed it while it was idle.
		first := errors.Is(err, errNoResponse)
		return 0, nil, readOnly && reused && first, err
	}
	c.used = true
	if closeAfter {
		c.Close()
	}
	return status, resp, true, nil
}

var errNoResponse = errors.New("the connection closed before a response")

// readResponse reads one HTTP/1.1 response: its status, its whole body (of
// a Content-Length or chunked), and whether the server closes the
// connection after it.
func (c *Conn) readResponse() (status int, body []byte, closeAfter bool, err error) {
	line, err := c.readLine()
	if err != nil {
		if errors.Is(err, io.EOF) || isReset(err) {
			return 0, nil, false, fmt.Errorf("%w: %v", errNoResponse, err)
		}
		return 0, nil, false, err
	}
	// HTTP/1.1 200 OK
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || len(rest) < 3 {
		return 0, nil, false, fmt.Errorf("malformed status line %q", line)
	}
	status, err = strconv.Atoi(rest[:3])
	if err != nil {
		return 0, nil, false, fmt.Errorf("malformed status line %q", line)
	}
	closeAfter = proto == "HTTP/1.0"
	length, chunked := int64(-1), false
	for {
		line, err := c.readLine()
		if err != nil {
			return 0, nil, false, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return 0, nil, false, fmt.Errorf("malformed header line %q", line)
		}
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if length, err = strconv.ParseInt(value, 10, 64); err != nil || length < 0 {
				return 0, nil, false, fmt.Errorf("bad Content-Length %q", value)
			}
		case strings.EqualFold(name, "Transfer-Encoding"):
			chunked = strings.EqualFold(value, "chunked")
		case strings.EqualFold(name, "Connection"):
			closeAfter = closeAfter || strings.EqualFold(value, "close")
		}
	}
	switch {
	case chunked:
		body, err = c.readChunked()
	case length >= 0:
		if length > maxReplyBytes {
			return 0, nil, false, fmt.Errorf("a reply of %d bytes is more than this client takes (%d)", length, maxReplyBytes)
		}
		body = make([]byte, length)
		_, err = io.ReadFull(c.br, body)
	case status == http.StatusNoContent || status == http.StatusNotModified:
	default:
		body, err = io.ReadAll(io.LimitReader(c.br, maxReplyBytes))
		closeAfter = true
	}
	return status, body, closeAfter, err
}

// maxReplyBytes bounds one reply's body.
const maxReplyBytes = 1 << 30

func (c *Conn) readChunked() ([]byte, error) {
	var body []byte
	for {
		line, err := c.readLine()
		if err != nil {
			return nil, err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 || int64(len(body))+n > maxReplyBytes {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			for { // trailers, up to the blank line
				line, err := c.readLine()
				if err != nil {
					return nil, err
				}
				if line == "" {
					return body, nil
				}
			}
		}
		start := len(body)
		body = append(body, make([]byte, n)...)
		if _, err := io.ReadFull(c.br, body[start:]); err != nil {
			return nil, err
		}
		if line, err := c.readLine(); err != nil || line != "" {
			return nil, fmt.Errorf("chunk of %d bytes not followed by CRLF", n)
		}
	}
}

func (c *Conn) readLine() (string, error) {
	b, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", errors.New("a response line longer than 16 KiB")
		}
		return "", err
	}
	return string(bytes.TrimRight(b, "\r\n")), nil
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}
