package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"golang.org/x/text/width"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/control"
	"github.com/borealis-db/borealis/internal/router"
	"github.com/borealis-db/borealis/internal/sqlclient"
)

const (
	sqlPrompt             = "borealis> "
	sqlContinuationPrompt = "    ...> "
	sqlHistoryFile        = ".borealis_history"
	sqlHistoryMax         = 1000
)

func sqlCmd() *cobra.Command {
	var dir, endpoint, script, replicaFlag string
	var asJSON, reader bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "sql [--dir D | --endpoint URL] [--replica ID | --reader] [-e SQL] [--json] [--timeout T]",
		Short: "Run SQL on a database instance: one statement or script with -e, else a shell",
		Long: `Run SQL on the writer of a running cluster, through its HTTP SQL API: on the
router's cluster endpoint, which follows the writer through a failover (on
the writer itself when the cluster runs no router); with --replica ID on
that read replica, and with --reader on the router's reader endpoint, which
balances queries over the replicas. A replica and the reader endpoint run
queries only: a write there is refused, saying where writes go.

During a failover the cluster endpoint holds a statement until the new
writer serves (up to the router's --failover-wait); a write that was under
way on a writer that died has an unknown outcome, and sql says so: check
before running it again. The shell goes on after either.

With -e it runs one statement or a ';'-separated script and exits; without it,
it is an interactive shell (statements end with ';', and .help lists the dot
commands), or, when standard input is not a terminal, it runs the statements
read from it and stops at the first error.

Statements that only read (SELECT, WITH ... SELECT, VALUES, EXPLAIN, PRAGMA
without '=') run on a read connection and print their rows as a table, or
with --json as one JSON object each ({"columns":...,"types":...,"rows":...}).
A table shows at most 50 columns of a value, cut short with '…', and a blob
too long for that as its size and first bytes; --json has every value whole.
Other statements run on the writer and print only the rows they return
(RETURNING), or with --json the server's {"results":[...]}. Each runs in its
own transaction, except that the statements between BEGIN and COMMIT (or
SAVEPOINT and its RELEASE) are held back and sent together as one transaction
at COMMIT, reads among them included (their rows are printed then); a
ROLLBACK drops them unsent.`,
		Args: noArgs(`; give SQL with -e "...", or on standard input`),
		RunE: func(cmd *cobra.Command, args []string) error {
			if endpoint != "" && cmd.Flags().Changed("dir") {
				return errors.New("give --dir or --endpoint, not both")
			}
			if err := checkSQLTarget(endpoint, replicaFlag, cmd.Flags().Changed("replica"), reader); err != nil {
				return err
			}
			if timeout < 0 {
				return fmt.Errorf("--timeout %s: want a duration of 0 (never) or more", timeout)
			}
			target, err := sqlTargetFor(cmd.Context(), dir, endpoint, replicaFlag, reader)
			if err != nil {
				return err
			}
			s := &sqlSession{
				client:  &sqlclient.Client{Endpoint: target.endpoint, HTTP: &http.Client{}},
				target:  target,
				timeout: timeout,
				out:     cmd.OutOrStdout(),
				asJSON:  asJSON,
			}
			ctx := cmd.Context()
			if cmd.Flags().Changed("execute") {
				return s.runScript(ctx, script)
			}
			in := cmd.InOrStdin()
			if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) && term.IsTerminal(int(os.Stdout.Fd())) {
				return s.shell(ctx, f, os.Stdout)
			}
			return s.readAll(ctx, in)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", defaultDir, "directory of a cluster that borealis up runs (its cluster.json names the writer)")
	f.StringVar(&endpoint, "endpoint", "", "the database instance's HTTP address, such as http://127.0.0.1:7110 (instead of --dir)")
	f.StringVar(&replicaFlag, "replica", "", "run on this read replica of the --dir cluster (such as r1), as cluster.json or the catalog names it: queries only")
	f.BoolVar(&reader, "reader", false, "run on the router's reader endpoint of the --dir cluster, which balances queries over the replicas: queries only")
	f.StringVarP(&script, "execute", "e", "", "run this statement or ';'-separated script (or one dot command) and exit")
	f.BoolVar(&asJSON, "json", false, "print each result as one JSON object per line")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "give up on a statement after this long (0: never)")
	return cmd
}

// sqlEndpoint is --endpoint, or the writer that the cluster.json in dir lists.
func sqlEndpoint(dir, endpoint string) (string, error) {
	if endpoint != "" {
		return endpoint, nil
	}
	path := filepath.Join(dir, clusterFileName)
	cf, err := cluster.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no running cluster in %s (there is no %s); start one with `borealis up --dir %s`, or give --endpoint URL", dir, path, dir)
	}
	if err != nil {
		return "", fmt.Errorf("no running cluster in %s: %w", dir, err)
	}
	if err := upGone(dir); err != nil {
		return "", err
	}
	if c, ok := cf.Find("writer"); ok {
		return "http://" + c.Addr, nil
	}
	return "", fmt.Errorf("%s lists no writer: the cluster runs no database instance; give --endpoint URL of one", path)
}

// checkSQLTarget refuses flags that name more than one place to run SQL.
func checkSQLTarget(endpoint, replica string, replicaSet, reader bool) error {
	switch {
	case replicaSet && replica == "":
		return errors.New("--replica needs the id of a replica, such as r1 (`borealis status` lists them)")
	case replicaSet && reader:
		return errors.New("give --replica ID or --reader, not both: --reader balances queries over every replica")
	case endpoint != "" && (replicaSet || reader):
		return errors.New("give --endpoint URL, or --replica ID or --reader of the --dir cluster, not both")
	}
	return nil
}

// sqlTarget is where `borealis sql` runs its statements.
type sqlTarget struct {
	endpoint string
	// kind is "cluster" (the router's cluster endpoint, which follows the
	// writer), "writer" (cluster.json's writer, when it lists no router),
	// "replica", "reader" (the router's reader endpoint) or "" (--endpoint).
	kind string
	// id names the replica.
	id string
	// dir is the cluster's directory; writer and clusterEndpoint are its
	// writer's and router's cluster endpoint URLs ("" if unknown), where a
	// write sent to a replica or the reader endpoint should go instead.
	dir, writer, clusterEndpoint string
}

// sqlTargetFor finds where to run SQL: --endpoint; else in the cluster of
// dir, the replica named by --replica (from cluster.json, or the catalog
// for one that `up` did not start), the router's reader endpoint with
// --reader, or the writer.
func sqlTargetFor(ctx context.Context, dir, endpoint, replica string, reader bool) (sqlTarget, error) {
	if endpoint != "" {
		return sqlTarget{endpoint: endpoint}, nil
	}
	if replica == "" && !reader {
		// The router's cluster endpoint follows the writer through a
		// failover, so that a shell outlives the writer it began on.
		if cf, err := cluster.ReadFile(filepath.Join(dir, clusterFileName)); err == nil {
			if r, ok := cf.Find("router"); ok && r.ClusterEndpoint != "" {
				if err := upGone(dir); err != nil {
					return sqlTarget{}, err
				}
				return sqlTarget{endpoint: "http://" + r.ClusterEndpoint, kind: "cluster", dir: dir}, nil
			}
		}
		ep, err := sqlEndpoint(dir, "")
		return sqlTarget{endpoint: ep, kind: "writer", dir: dir}, err
	}
	path := filepath.Join(dir, clusterFileName)
	cf, err := cluster.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return sqlTarget{}, fmt.Errorf("no running cluster in %s (there is no %s); start one with `%s up --dir %s`, or give --endpoint URL of an instance", dir, path, invocation(), shellQuote(dir))
	}
	if err != nil {
		return sqlTarget{}, fmt.Errorf("no running cluster in %s: %w", dir, err)
	}
	if err := upGone(dir); err != nil {
		return sqlTarget{}, err
	}
	t := sqlTarget{dir: dir}
	if w, ok := cf.Find("writer"); ok {
		t.writer = "http://" + w.Addr
	}
	if r, ok := cf.Find("router"); ok && r.ClusterEndpoint != "" {
		t.clusterEndpoint = "http://" + r.ClusterEndpoint
	}
	if reader {
		r, ok := cf.Find("router")
		if !ok || r.ReaderEndpoint == "" {
			return sqlTarget{}, fmt.Errorf("%s lists no router, so there is no reader endpoint; `--replica ID` runs on one replica", path)
		}
		t.endpoint, t.kind = "http://"+r.ReaderEndpoint, "reader"
		return t, nil
	}
	t.kind, t.id = "replica", replica
	if c, ok := cf.ByID(replica); ok {
		if c.Role != "replica" {
			return sqlTarget{}, fmt.Errorf("%s is the cluster's %s, not a read replica; %s", replica, c.Role, replicaList(cf.Replicas()))
		}
		t.endpoint = "http://" + c.Addr
		return t, nil
	}
	// A replica `up` did not start (`borealis db --role replica` by hand)
	// is in the catalog.
	ctlAddrs := cf.ControlAddrs()
	if ctlAddrs == "" {
		return sqlTarget{}, fmt.Errorf("%s lists no replica %s, and no control plane to ask; %s", path, replica, replicaList(cf.Replicas()))
	}
	conn, err := control.Dial(ctlAddrs)
	if err != nil {
		return sqlTarget{}, err
	}
	defer conn.Close()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := pb.NewControlClient(conn).ListInstances(lctx, &pb.ListInstancesRequest{Volume: defaultVolume})
	if err != nil {
		return sqlTarget{}, fmt.Errorf("%s lists no replica %s, and the catalog could not be asked: %v", path, replica, shortErr(err))
	}
	for _, in := range resp.Instances {
		if in.Id == replica && in.Role == "replica" {
			t.endpoint = "http://" + in.SqlEndpoint
			return t, nil
		}
	}
	known := cf.Replicas()
	for _, in := range resp.Instances {
		if _, listed := cf.ByID(in.Id); in.Role == "replica" && !listed {
			known = append(known, cluster.Component{ID: in.Id})
		}
	}
	return sqlTarget{}, fmt.Errorf("no replica %s: neither %s nor the catalog knows it; %s", replica, path, replicaList(known))
}

// replicaList names the replicas there are, for an error.
func replicaList(reps []cluster.Component) string {
	if len(reps) == 0 {
		return "the cluster runs no replica (`borealis up --replicas N` starts some)"
	}
	ids := make([]string, len(reps))
	for i, r := range reps {
		ids[i] = r.ID
	}
	return "its replicas are " + strings.Join(ids, ", ")
}

// describe says what the session runs on, for the shell's greeting.
func (t sqlTarget) describe() string {
	switch t.kind {
	case "cluster":
		return " (the router's cluster endpoint: it follows the writer through a failover)"
	case "replica":
		return fmt.Sprintf(" (read replica %s: queries only)", t.id)
	case "reader":
		return " (the router's reader endpoint: queries only, balanced over the replicas)"
	}
	return ""
}

// writeHint is what to tell a user whose write a replica or the reader
// endpoint refused: where writes go.
func (t sqlTarget) writeHint() string {
	var what string
	switch t.kind {
	case "replica":
		what = fmt.Sprintf("this session runs on read replica %s, which never writes", t.id)
	case "reader":
		what = "this session runs on the router's reader endpoint, which only runs queries"
	default:
		return ""
	}
	var where []string
	if t.writer != "" {
		where = append(where, fmt.Sprintf("`%s sql --dir %s` runs them on the writer (%s)", invocation(), shellQuote(t.dir), t.writer))
	}
	if t.clusterEndpoint != "" {
		where = append(where, fmt.Sprintf("the router's cluster endpoint %s takes them and follows the writer", t.clusterEndpoint))
	}
	if len(where) == 0 {
		return what + "; send writes to the writer"
	}
	return what + ": " + strings.Join(where, ", and ")
}

// hintedError is a server's refusal with a hint for the user after it.
type hintedError struct {
	err  error
	hint string
}

func (e *hintedError) Error() string { return e.err.Error() + "\n" + e.hint }
func (e *hintedError) Unwrap() error { return e.err }

// withWriteHint adds to a replica's or the reader endpoint's not_writer
// where writes go.
func (s *sqlSession) withWriteHint(err error) error {
	if sqlclient.Code(err) != "not_writer" {
		return err
	}
	if h := s.target.writeHint(); h != "" {
		return &hintedError{err, h}
	}
	return err
}

// sqlSession runs statements one at a time and prints their results. It
// holds back the statements of an explicit transaction until its COMMIT.
type sqlSession struct {
	client  *sqlclient.Client
	target  sqlTarget
	timeout time.Duration
	out     io.Writer
	asJSON  bool
	txn     *sqlTxn // the open explicit transaction, or nil

	// running, when set, cancels the statement in flight (the shell sets it
	// to let Ctrl-C stop a statement without ending the shell).
	mu      sync.Mutex
	running context.CancelFunc
}

type sqlTxn struct {
	stmts []sqlclient.Statement
	// savepoint names the SAVEPOINT that opened the transaction, whose
	// RELEASE commits it.
	savepoint string
}

// runScript runs a -e argument: a dot command, or statements, stopping at
// the first error. A statement may lack its final ';'.
func (s *sqlSession) runScript(ctx context.Context, script string) error {
	if t := strings.TrimSpace(script); strings.HasPrefix(t, ".") {
		_, err := s.dot(ctx, t)
		return err
	}
	stmts, rest := sqlclient.Split(script)
	if !sqlclient.Blank(rest) {
		stmts = append(stmts, strings.TrimSpace(rest))
	}
	for _, st := range stmts {
		if err := s.run(ctx, st); err != nil {
			return stmtError(st, len(stmts), err)
		}
	}
	return s.end()
}

// readAll runs the statements and dot commands read from in (not a
// terminal), stopping at the first error, as a script would want.
func (s *sqlSession) readAll(ctx context.Context, in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	var buf strings.Builder
	for sc.Scan() {
		line := sc.Text()
		if sqlclient.Blank(buf.String()) && strings.HasPrefix(strings.TrimSpace(line), ".") {
			buf.Reset()
			quit, err := s.dot(ctx, strings.TrimSpace(line))
			if err != nil {
				return err
			}
			if quit {
				return s.end()
			}
			continue
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
		stmts, rest := sqlclient.Split(buf.String())
		for _, st := range stmts {
			if err := s.run(ctx, st); err != nil {
				return stmtError(st, 2, err)
			}
		}
		buf.Reset()
		buf.WriteString(rest)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if rest := buf.String(); !sqlclient.Blank(rest) {
		if err := s.run(ctx, strings.TrimSpace(rest)); err != nil {
			return stmtError(rest, 2, err)
		}
	}
	return s.end()
}

// stmtError names the statement that failed when there were several.
func stmtError(stmt string, n int, err error) error {
	if n <= 1 {
		return err
	}
	return fmt.Errorf("%s: %w", excerpt(stmt), err)
}

func excerpt(stmt string) string {
	s := strings.Join(strings.Fields(stmt), " ")
	if utf8.RuneCountInString(s) > 60 {
		s = string([]rune(s)[:57]) + "..."
	}
	return strconv.Quote(s)
}

// end is the end of the input: a transaction still open is dropped, as
// SQLite drops one when its connection closes, and that is an error.
func (s *sqlSession) end() error {
	if s.txn == nil {
		return nil
	}
	n := len(s.txn.stmts)
	s.txn = nil
	return fmt.Errorf("the input ended inside a transaction (BEGIN without COMMIT): its %d statement(s) were not sent", n)
}

// run runs one statement (without its ';').
func (s *sqlSession) run(ctx context.Context, stmt string) error {
	kind, name := sqlclient.Classify(stmt)
	if t := s.txn; t != nil {
		switch kind {
		case sqlclient.Begin:
			return errors.New("cannot start a transaction within a transaction")
		case sqlclient.Savepoint:
			t.stmts = append(t.stmts, sqlclient.Statement{SQL: stmt})
			return nil
		case sqlclient.Commit:
			s.txn = nil
			return s.execute(ctx, t.stmts, true)
		case sqlclient.Release:
			t.stmts = append(t.stmts, sqlclient.Statement{SQL: stmt})
			if t.savepoint != "" && strings.EqualFold(name, t.savepoint) {
				s.txn = nil
				return s.execute(ctx, t.stmts, true)
			}
			return nil
		case sqlclient.Rollback:
			s.txn = nil
			return nil
		default:
			// Reads too: they run in the transaction at COMMIT, seeing its
			// earlier statements, and their rows are printed then.
			t.stmts = append(t.stmts, sqlclient.Statement{SQL: stmt})
			return nil
		}
	}
	switch kind {
	case sqlclient.Begin:
		s.txn = &sqlTxn{}
		return nil
	case sqlclient.Savepoint:
		s.txn = &sqlTxn{savepoint: name, stmts: []sqlclient.Statement{{SQL: stmt}}}
		return nil
	case sqlclient.Commit:
		return errors.New("cannot commit - no transaction is active")
	case sqlclient.Rollback:
		return errors.New("cannot rollback - no transaction is active")
	case sqlclient.Release:
		return fmt.Errorf("no such savepoint: %s", name)
	case sqlclient.Read:
		err := s.query(ctx, stmt)
		// What looked like a read wrote (a PRAGMA setting something with
		// parentheses, say): the read connection refused it and changed
		// nothing, so the writer runs it, or refuses it in its own words.
		if c := sqlclient.Code(err); c == "read_only" || c == "not_allowed" {
			return s.execute(ctx, []sqlclient.Statement{{SQL: stmt}}, false)
		}
		return err
	}
	return s.execute(ctx, []sqlclient.Statement{{SQL: stmt}}, false)
}

// statementContext is the context of one statement, from its request to
// the last row printed: the shell's Ctrl-C cancels it (see interrupt), and so
// does a signal, through ctx.
func (s *sqlSession) statementContext(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.running = cancel
	s.mu.Unlock()
	return ctx, func() {
		s.mu.Lock()
		s.running = nil
		s.mu.Unlock()
		cancel()
	}
}

// requestContext bounds a request by --timeout. Printing its result is not
// bounded: a slow terminal is no reason to give up on rows already here.
func (s *sqlSession) requestContext(sctx context.Context) (context.Context, context.CancelFunc) {
	if s.timeout > 0 {
		return context.WithTimeout(sctx, s.timeout)
	}
	return context.WithCancel(sctx)
}

// interrupt cancels the statement in flight; it reports whether there was
// one.
func (s *sqlSession) interrupt() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running == nil {
		return false
	}
	s.running()
	return true
}

func (s *sqlSession) execute(ctx context.Context, stmts []sqlclient.Statement, transaction bool) error {
	if len(stmts) == 0 {
		return nil
	}
	sctx, done := s.statementContext(ctx)
	defer done()
	rctx, cancel := s.requestContext(sctx)
	defer cancel()
	res, err := s.client.Execute(rctx, stmts, transaction)
	if err != nil {
		return s.withWriteHint(outcomeError(s.requestError(ctx, rctx, err, true), len(stmts), transaction))
	}
	if s.asJSON {
		// The server's shape: the counts, and columns, types and rows for
		// a statement that returned rows.
		out := make([]any, len(res))
		for i, r := range res {
			if r.Rows == nil {
				out[i] = r
				continue
			}
			out[i] = struct {
				sqlclient.Result
				*jsonRows
			}{r, rowsJSON(r.Rows)}
		}
		return writeJSONLine(s.out, map[string]any{"results": out})
	}
	// Rows a statement returned (RETURNING, or a SELECT sent along with
	// writes in a transaction) are printed like a query's.
	for _, r := range res {
		if r.Rows != nil {
			if err := printTable(sctx, s.out, r.Rows); err != nil {
				return printError(ctx, err)
			}
		}
	}
	return nil
}

func (s *sqlSession) query(ctx context.Context, stmt string, params ...any) error {
	sctx, done := s.statementContext(ctx)
	defer done()
	rows, err := s.fetch(ctx, sctx, stmt, params...)
	if err != nil {
		return err
	}
	if s.asJSON {
		return writeJSONLine(s.out, rowsJSON(rows))
	}
	return printError(ctx, printTable(sctx, s.out, rows))
}

// queryRows runs a query whose rows the caller prints.
func (s *sqlSession) queryRows(ctx context.Context, stmt string, params ...any) (*sqlclient.Rows, error) {
	sctx, done := s.statementContext(ctx)
	defer done()
	return s.fetch(ctx, sctx, stmt, params...)
}

// fetch runs a query in the statement context sctx, under ctx.
func (s *sqlSession) fetch(ctx, sctx context.Context, stmt string, params ...any) (*sqlclient.Rows, error) {
	rctx, cancel := s.requestContext(sctx)
	defer cancel()
	rows, err := s.client.Query(rctx, stmt, params...)
	if err != nil {
		return nil, s.requestError(ctx, rctx, err, false)
	}
	return rows, nil
}

// printError says why printing a result stopped: a signal (ctx's error,
// which the command's exit reports), Ctrl-C in the shell, or the output.
func printError(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, context.Canceled):
		return errors.New("interrupted: the rest of the rows were not printed")
	}
	return err
}

// outcomeError puts first, for a write the router answered
// outcome_unknown (it reached a writer that failed before it answered,
// during a failover), that nobody knows whether it took effect: the
// session goes on, and the user should look before running it again. A
// write the router held for a new writer and sent is no error at all, and
// one it refused (no_writer) did not run.
func outcomeError(err error, n int, transaction bool) error {
	what := "the statement"
	if transaction && n > 1 {
		what = "the transaction"
	}
	switch sqlclient.Code(err) {
	case router.CodeOutcomeUnknown:
		return fmt.Errorf("the outcome of %s is unknown: the writer failed before it answered, and it may or may not have committed; check before running it again\n%w", what, err)
	case router.CodeNoWriter:
		return fmt.Errorf("%s did not run: %w", what, err)
	}
	return err
}

// requestError says what a failed request means for the user: the server's
// refusal as it is, else whether the statement may have taken effect.
func (s *sqlSession) requestError(outer, sctx context.Context, err error, write bool) error {
	var se *sqlclient.Error
	if errors.As(err, &se) {
		return err
	}
	maybe := ""
	if write {
		maybe = "; it may or may not have committed"
	}
	switch {
	case outer.Err() != nil:
		return outer.Err()
	case errors.Is(sctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("no reply within --timeout %s%s", s.timeout, maybe)
	case sctx.Err() != nil:
		return fmt.Errorf("interrupted%s", maybe)
	}
	return fmt.Errorf("no answer from the database instance at %s (%v)%s", s.client.Endpoint, err, maybe)
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// jsonRows is a result set as --json prints it: in the API's own form, blobs
// as {"base64":...}, REALs with a point or an exponent (2.0) and infinities
// as {"real":"Infinity"}.
type jsonRows struct {
	Columns []string `json:"columns"`
	Types   []string `json:"types"`
	Rows    [][]any  `json:"rows"`
}

func rowsJSON(r *sqlclient.Rows) *jsonRows {
	rows := make([][]any, len(r.Rows))
	for i, row := range r.Rows {
		out := make([]any, len(row))
		for j, v := range row {
			switch x := v.(type) {
			case []byte:
				v = map[string]string{"base64": base64.StdEncoding.EncodeToString(x)}
			case float64:
				// As the server writes a REAL: 2.0, not 2, and the
				// infinities, which JSON numbers cannot carry, as
				// {"real":"Infinity"}.
				v = sqlclient.Real(x)
			}
			out[j] = v
		}
		rows[i] = out
	}
	cols, types := r.Columns, r.Types
	if cols == nil {
		cols = []string{}
	}
	if types == nil {
		types = []string{}
	}
	return &jsonRows{cols, types, rows}
}

// maxCellWidth caps a table column, in terminal columns. A longer value is
// cut short and ends in cellMore, so that one long value neither widens
// every row of its column nor makes the table's size grow with it; --json
// prints every value whole. (sqlCmd's help names it.)
const maxCellWidth = 50

// maxCellBytesPerColumn bounds the bytes of a table cell: at most this many
// times maxCellWidth. Four is a column of the longest characters UTF-8
// has; a value whose characters of no width (combining marks, U+200B)
// take it past that is cut short there.
const maxCellBytesPerColumn = 4

// cellMore ends a value cut short, and a blob's summary.
const cellMore = "…"

// blobPrefixBytes is how many leading bytes of a blob too long to show
// whole its summary shows, in hex.
const blobPrefixBytes = 8

// printTable prints rows as sqlite3 -header -column does: a header, a rule,
// columns two spaces apart; numbers are right-aligned. Unlike sqlite3, a
// column is at most maxCellWidth wide (see tableCell). A result with no rows
// prints nothing. It stops, with ctx's error, when ctx is cancelled.
func printTable(ctx context.Context, w io.Writer, r *sqlclient.Rows) error {
	if len(r.Rows) == 0 {
		return nil
	}
	type cell struct {
		s     string
		width int
	}
	ncol := len(r.Columns)
	header := make([]cell, ncol)
	colWidth := make([]int, ncol)
	numeric := make([]bool, ncol)
	for j, c := range r.Columns {
		s, n := cellText(c, maxCellWidth)
		header[j] = cell{s, n}
		colWidth[j] = n
	}
	// Every cell is formatted once, and is short: the table costs what it
	// prints, however long the values behind it.
	cells := make([][]cell, len(r.Rows))
	for i, row := range r.Rows {
		if i%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		cells[i] = make([]cell, ncol)
		for j := range ncol {
			if j >= len(row) {
				continue
			}
			s, n := tableCell(row[j])
			cells[i][j] = cell{s, n}
			colWidth[j] = max(colWidth[j], n)
			switch row[j].(type) {
			case int64, float64:
				numeric[j] = true
			}
		}
	}
	bw := bufio.NewWriter(w)
	var line []byte
	spaces := strings.Repeat(" ", maxCellWidth)
	rule := strings.Repeat("-", maxCellWidth)
	write := func(vals []cell, rightAlign bool) error {
		line = line[:0]
		for j, v := range vals {
			if j > 0 {
				line = append(line, "  "...)
			}
			pad := spaces[:max(0, colWidth[j]-v.width)]
			if rightAlign && numeric[j] {
				line = append(line, pad...)
				line = append(line, v.s...)
			} else {
				line = append(line, v.s...)
				line = append(line, pad...)
			}
		}
		line = append(bytes.TrimRight(line, " "), '\n')
		_, err := bw.Write(line)
		return err
	}
	if err := write(header, true); err != nil {
		return err
	}
	rules := make([]cell, ncol)
	for j, n := range colWidth {
		rules[j] = cell{rule[:n], n}
	}
	if err := write(rules, false); err != nil {
		return err
	}
	for _, row := range cells {
		// A signal, or Ctrl-C in the shell, stops a long table between
		// rows rather than after the last; the rows before it are printed
		// whole.
		if err := ctx.Err(); err != nil {
			if ferr := bw.Flush(); ferr != nil {
				return ferr
			}
			return err
		}
		if err := write(row, true); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// tableCell is v as a table cell shows it, and its width in terminal
// columns, at most maxCellWidth: text and numbers as formatValue shows
// them, cut short if longer; a blob as an X'...' literal if that fits, else
// as a summary of its size and first bytes.
func tableCell(v any) (string, int) {
	switch v := v.(type) {
	case string:
		return cellText(v, maxCellWidth)
	case []byte:
		if 3+2*len(v) <= maxCellWidth {
			s := formatValue(v)
			return s, len(s)
		}
		s := fmt.Sprintf("<blob %d bytes: %X%s>", len(v), v[:blobPrefixBytes], cellMore)
		return cellText(s, maxCellWidth)
	}
	return cellText(formatValue(v), maxCellWidth)
}

// cellText is s with newlines, tabs and other control characters escaped
// (\n, \t, \x1b), and the characters that reorder text on the screen (bidi
// controls such as U+202E) or break a line (U+2028, U+2029) too, which
// keeps a value on its row and the terminal's state alone; cut short with
// cellMore if it is wider than limit columns or longer than
// maxCellBytesPerColumn*limit bytes (characters of no width, such as
// U+200B, would otherwise make a cell of one column as long as the value);
// and its width. limit < 0: no limit. It reads only as much of s as it
// shows.
func cellText(s string, limit int) (string, int) {
	var b strings.Builder
	n := 0
	maxBytes := maxCellBytesPerColumn * limit
	// cut and cutWidth: where s is cut if it turns out too wide or too
	// long, leaving room for cellMore.
	cut, cutWidth := 0, 0
	for _, r := range s {
		var esc string
		w := 0
		switch {
		case r == '\n':
			esc = `\n`
		case r == '\r':
			esc = `\r`
		case r == '\t':
			esc = `\t`
		case r < 0x80 && unicode.IsControl(r):
			esc = fmt.Sprintf(`\x%02x`, r)
		case unicode.IsControl(r), unicode.Is(unicode.Bidi_Control, r), r == '\u2028', r == '\u2029':
			esc = fmt.Sprintf(`\u%04x`, r)
		default:
			w = runeWidth(r)
		}
		size := utf8.RuneLen(r)
		if esc != "" {
			w, size = len(esc), len(esc)
		}
		if limit >= 0 && (n+w > limit || b.Len()+size > maxBytes) {
			return b.String()[:cut] + cellMore, cutWidth + 1
		}
		if esc != "" {
			b.WriteString(esc)
		} else {
			b.WriteRune(r)
		}
		n += w
		if n+1 <= limit && b.Len()+len(cellMore) <= maxBytes {
			cut, cutWidth = b.Len(), n
		}
	}
	return b.String(), n
}

// displayWidth is how many terminal columns s takes (see runeWidth).
func displayWidth(s string) int {
	n := 0
	for _, r := range s {
		n += runeWidth(r)
	}
	return n
}

// runeWidth is how many terminal columns r takes: East Asian wide and
// fullwidth characters (CJK, most emoji) take two, combining marks and
// invisible format characters none.
func runeWidth(r rune) int {
	if unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf) {
		return 0
	}
	switch width.LookupRune(r).Kind() {
	case width.EastAsianWide, width.EastAsianFullwidth:
		return 2
	}
	return 1
}

// formatValue shows a value as sqlite3 would, except that NULL shows as
// NULL (not as an empty string, which it is not), blobs as X'hex'
// literals rather than raw bytes, and newlines, tabs and other control
// characters in text escaped, as cellText does. An INTEGER (int64) has no
// point, a REAL (float64) always has one (formatReal).
func formatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case int64:
		return strconv.FormatInt(v, 10)
	case float64:
		return formatReal(v)
	case string:
		s, _ := cellText(v, -1)
		return s
	case []byte:
		return "X'" + strings.ToUpper(hex.EncodeToString(v)) + "'"
	case bool:
		if v {
			return "1"
		}
		return "0"
	}
	return fmt.Sprint(v)
}

// formatReal shows a REAL as SQLite writes one as text (CAST(x AS TEXT),
// and so the sqlite3 shell): with a point or an exponent even when it is
// whole (2.0, 1.0e+300), in fixed notation from 1.0e-04 up to below 1e17 and
// with an exponent of at least two digits beyond (1.0e-05, 1.0e+17); Inf
// and -Inf. The digits are the fewest that read back as x, so the value
// shown is the one the server sent, where SQLite sometimes writes 17
// (123456789012345.59 for 123456789012345.6); and -0.0 keeps its sign,
// which SQLite drops.
func formatReal(x float64) string {
	if math.IsInf(x, 0) {
		if x < 0 {
			return "-Inf"
		}
		return "Inf"
	}
	e := strconv.FormatFloat(x, 'e', -1, 64) // -d.ddde±dd
	mant, exp, _ := strings.Cut(e, "e")
	neg := strings.HasPrefix(mant, "-")
	digits := strings.Replace(strings.TrimPrefix(mant, "-"), ".", "", 1)
	n, _ := strconv.Atoi(exp)
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	switch {
	case n < -4 || n >= 17:
		b.WriteString(digits[:1])
		b.WriteByte('.')
		if len(digits) > 1 {
			b.WriteString(digits[1:])
		} else {
			b.WriteByte('0')
		}
		fmt.Fprintf(&b, "e%+03d", n)
	case n < 0:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -n-1))
		b.WriteString(digits)
	case len(digits) > n+1:
		b.WriteString(digits[:n+1])
		b.WriteByte('.')
		b.WriteString(digits[n+1:])
	default:
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", n+1-len(digits)))
		b.WriteString(".0")
	}
	return b.String()
}

const sqlHelp = `Statements end with ';' and may span lines. Reads run on a read
connection; writes on the writer, each in its own transaction unless inside
BEGIN ... COMMIT, whose statements are sent together at COMMIT.
.help             this text
.quit, .exit      leave (so does Ctrl-D)
.schema [TABLE]   the CREATE statements of every table, or of TABLE
.status           the instance: role, volume, epoch, VDL, ready and counters
.tables           the tables and views
Ctrl-C drops the statement being typed, or stops the one running.
`

// dot runs a dot command; quit reports .quit or .exit.
func (s *sqlSession) dot(ctx context.Context, line string) (quit bool, err error) {
	fields := strings.Fields(line)
	switch fields[0] {
	case ".quit", ".exit", ".q":
		return true, nil
	case ".help":
		_, err := io.WriteString(s.out, sqlHelp)
		return false, err
	case ".tables":
		rows, err := s.queryRows(ctx, "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name")
		if err != nil {
			return false, err
		}
		if s.asJSON {
			return false, writeJSONLine(s.out, rowsJSON(rows))
		}
		var names []string
		for _, r := range rows.Rows {
			names = append(names, formatValue(r[0]))
		}
		return false, printNameColumns(s.out, names, 80)
	case ".schema":
		q := "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
		var params []any
		if len(fields) > 1 {
			// LIKE, as sqlite3 does: case-insensitive, and % and _ match.
			q += " AND (name LIKE ?1 OR tbl_name LIKE ?1)"
			params = append(params, fields[1])
		}
		rows, err := s.queryRows(ctx, q+" ORDER BY rowid", params...)
		if err != nil {
			return false, err
		}
		if s.asJSON {
			return false, writeJSONLine(s.out, rowsJSON(rows))
		}
		for _, r := range rows.Rows {
			if _, err := fmt.Fprintf(s.out, "%s;\n", formatValue(r[0])); err != nil {
				return false, err
			}
		}
		return false, nil
	case ".status":
		sctx, done := s.statementContext(ctx)
		defer done()
		rctx, cancel := s.requestContext(sctx)
		defer cancel()
		if s.target.kind == "reader" {
			return false, s.routerStatus(ctx, rctx)
		}
		client := s.client
		if s.target.kind == "cluster" {
			// The router's view names the writer it follows; the rest is
			// that writer's own health.
			st, err := s.fetchRouterStatus(ctx, rctx)
			if err != nil {
				return false, err
			}
			if st.Writer == nil {
				return false, fmt.Errorf("the router's cluster endpoint %s follows no writer now (a failover under way?): %s", s.client.Endpoint, followingText(st.Following))
			}
			if !s.asJSON {
				if _, err := fmt.Fprintf(s.out, "router    %s (the cluster endpoint): follows %s at epoch %d, %s\n", s.client.Endpoint, st.Writer.ID, st.Writer.Epoch, followingText(st.Following)); err != nil {
					return false, err
				}
			}
			client = &sqlclient.Client{Endpoint: "http://" + strings.TrimPrefix(st.Writer.Endpoint, "http://"), HTTP: s.client.HTTP}
		}
		h, err := client.Health(rctx)
		if err != nil {
			return false, s.requestError(ctx, rctx, err, false)
		}
		if s.asJSON {
			return false, writeJSONLine(s.out, h)
		}
		ready := fmt.Sprint(h.Ready)
		if h.Status != "" && h.Status != "ready" {
			ready += " (" + h.Status + ")"
		}
		_, err = fmt.Fprintf(s.out, "endpoint  %s\nrole      %s\nvolume    %s (id %d)\nepoch     %d\nVDL       %d\nready     %s\ncommits   %d\nqueries   %d\nredo      %d bytes shipped (whole dirty pages: %d bytes)\n",
			client.Endpoint, h.Role, h.Volume, h.VolumeID, h.Epoch, h.VDL, ready, h.Stats.Commits, h.Stats.Queries,
			h.Stats.RedoBytes, h.Stats.FullPageBytes)
		if err != nil {
			return false, err
		}
		switch r := h.Replica; {
		case r != nil:
			_, err = fmt.Fprintf(s.out, "stream    %s, from the writer at %s (its VDL %d)\nlag       %d LSNs, %s\npinned    %d (the oldest read point it holds)\nresyncs   %d\n",
				r.Stream, orDash(r.Writer), r.WriterVDL, r.LagLSN, formatLagMS(r.LagMS), h.ReadPoint, r.Resyncs)
		case h.Role == "writer":
			var ids []string
			for _, sub := range h.Replicas {
				ids = append(ids, sub.ID)
			}
			_, err = fmt.Fprintf(s.out, "PGMRPL    %d (the oldest read point of any instance)\nreplicas  %s\n", h.ReadPoint, orDash(strings.Join(ids, ", ")))
		}
		return false, err
	}
	return false, fmt.Errorf("unknown command %q: .help lists the commands (a dot command is a whole line of its own, with no ';')", fields[0])
}

// fetchRouterStatus asks the router whose endpoint the session runs on
// for its view of the volume.
func (s *sqlSession) fetchRouterStatus(ctx, rctx context.Context) (*router.Status, error) {
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, strings.TrimRight(s.client.Endpoint, "/")+"/v1/health", nil)
	if err != nil {
		return nil, err
	}
	hc := s.client.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, s.requestError(ctx, rctx, err, false)
	}
	defer resp.Body.Close()
	var st router.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s/v1/health answered %s, not a router's status: %v", s.client.Endpoint, resp.Status, err)
	}
	return &st, nil
}

// followingText says how the router follows the writer.
func followingText(f router.FollowStatus) string {
	var b strings.Builder
	switch f.Source {
	case router.SourceWatch:
		b.WriteString("told of every change by the control plane (WatchWriter)")
	case router.SourceCatalog:
		b.WriteString("from the catalog's listings")
	default:
		b.WriteString("from " + orDash(f.Source))
	}
	fmt.Fprintf(&b, "; %d writer change(s)", f.WriterChanges)
	if fo := f.Failover; fo != nil {
		fmt.Fprintf(&b, "; failover %d (%s) %s", fo.Round, orDash(fo.Kind), fo.State)
		if fo.Target != "" {
			b.WriteString(" to " + fo.Target)
		}
		if fo.Why != "" {
			b.WriteString(": " + fo.Why)
		}
	}
	return b.String()
}

// routerStatus is .status on the reader endpoint: the router's view of the
// volume's instances.
func (s *sqlSession) routerStatus(ctx, rctx context.Context) error {
	st, err := s.fetchRouterStatus(ctx, rctx)
	if err != nil {
		return err
	}
	if s.asJSON {
		return writeJSONLine(s.out, st)
	}
	writer := "none"
	if st.Writer != nil {
		writer = fmt.Sprintf("%s at %s (VDL %d)", st.Writer.ID, st.Writer.Endpoint, st.Writer.VDL)
	}
	if _, err := fmt.Fprintf(s.out, "endpoint  %s (the router's reader endpoint)\nvolume    %s\nwriter    %s\nmax lag   %s\n", s.client.Endpoint, st.Volume, writer, time.Duration(st.MaxLagMS*float64(time.Millisecond))); err != nil {
		return err
	}
	if len(st.Replicas) == 0 {
		_, err := fmt.Fprintln(s.out, "replicas  none: queries go to the writer")
		return err
	}
	for i, r := range st.Replicas {
		label := "replicas "
		if i > 0 {
			label = "         "
		}
		fit := "takes queries"
		if !r.Candidate {
			fit = "skipped: " + r.Why
		}
		if _, err := fmt.Fprintf(s.out, "%s %s at %s: VDL %d, %s, lag %s; %s\n", label, r.ID, r.Endpoint, r.VDL, orDash(r.Stream),
			formatLagMS(r.LagMS), fit); err != nil {
			return err
		}
	}
	return nil
}

// printNameColumns lays names out in columns, down then across, as
// sqlite3's .tables does.
func printNameColumns(w io.Writer, names []string, lineWidth int) error {
	if len(names) == 0 {
		return nil
	}
	wmax := 0
	for _, n := range names {
		wmax = max(wmax, displayWidth(n))
	}
	cols := max(1, (lineWidth+2)/(wmax+2))
	rows := (len(names) + cols - 1) / cols
	bw := bufio.NewWriter(w)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			i := c*rows + r
			if i >= len(names) {
				break
			}
			if c > 0 {
				bw.WriteString("  ")
			}
			n := names[i]
			if next := (c+1)*rows + r; next < len(names) {
				n += strings.Repeat(" ", wmax-displayWidth(n))
			}
			bw.WriteString(n)
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// shell is the interactive shell on a terminal.
func (s *sqlSession) shell(ctx context.Context, in *os.File, out *os.File) error {
	old, err := term.MakeRaw(int(in.Fd()))
	if err != nil {
		return s.readAll(ctx, in)
	}
	defer term.Restore(int(in.Fd()), old)
	keys := newTTYKeys(ctx, in, s.interrupt)
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{keys, out}, sqlPrompt)
	hist := loadSQLHistory(keys)
	t.History = hist
	resize := func() {
		if w, h, err := term.GetSize(int(out.Fd())); err == nil {
			t.SetSize(w, h)
		}
	}
	resize()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for range winch {
			resize()
		}
	}()
	// Results go through the terminal, which turns \n into \r\n in raw
	// mode and redraws the prompt around them.
	s.out = t
	fmt.Fprintf(t, "Connected to %s%s. Statements end with ';'; .help for help.\n", s.client.Endpoint, s.target.describe())
	var buf strings.Builder
	for {
		switch {
		case s.txn != nil && sqlclient.Blank(buf.String()):
			t.SetPrompt("borealis*> ")
		case sqlclient.Blank(buf.String()):
			t.SetPrompt(sqlPrompt)
		default:
			t.SetPrompt(sqlContinuationPrompt)
		}
		line, err := t.ReadLine()
		if keys.takeInterrupt() {
			buf.Reset()
			continue
		}
		if err == io.EOF {
			// Straight to the terminal: the Terminal would redraw its
			// prompt around a write.
			io.WriteString(out, "\r\n")
			if s.txn != nil {
				fmt.Fprintf(t, "the open transaction's %d statement(s) were not sent\n", len(s.txn.stmts))
			}
			return nil
		}
		if ctx.Err() != nil {
			fmt.Fprintln(t)
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, term.ErrPasteIndicator) {
			return err
		}
		if sqlclient.Blank(buf.String()) && strings.HasPrefix(strings.TrimSpace(line), ".") {
			buf.Reset()
			quit, err := s.dot(ctx, strings.TrimSpace(line))
			if err != nil {
				fmt.Fprintf(t, "Error: %v\n", err)
			}
			if quit {
				if s.txn != nil {
					fmt.Fprintf(t, "the open transaction's %d statement(s) were not sent\n", len(s.txn.stmts))
				}
				return nil
			}
			continue
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
		stmts, rest := sqlclient.Split(buf.String())
		buf.Reset()
		buf.WriteString(rest)
		for _, st := range stmts {
			kind, _ := sqlclient.Classify(st)
			wasOpen := s.txn != nil
			if err := s.run(ctx, st); err != nil {
				fmt.Fprintf(t, "Error: %v\n", err)
				// The rest of what was typed on the line is not run: it
				// most likely depends on what failed.
				break
			}
			switch {
			case !wasOpen && s.txn != nil:
				fmt.Fprintln(t, "(transaction open: its statements are sent together at COMMIT)")
			case wasOpen && s.txn == nil && kind == sqlclient.Rollback:
				fmt.Fprintln(t, "(rolled back: nothing was sent)")
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// ttyKeys reads the terminal for term.Terminal and watches for Ctrl-C: the
// terminal is raw, so Ctrl-C is a key, not SIGINT. While a statement runs,
// it stops the statement; while a line is typed, it drops the line.
type ttyKeys struct {
	// ctx ends reading: the terminal read cannot be interrupted, so a
	// SIGTERM would otherwise wait for the next key.
	ctx       context.Context
	data      chan []byte
	err       error // after data is closed
	pending   []byte
	interrupt func() bool

	mu          sync.Mutex
	interrupted bool
}

func newTTYKeys(ctx context.Context, in io.Reader, interrupt func() bool) *ttyKeys {
	k := &ttyKeys{ctx: ctx, data: make(chan []byte, 16), interrupt: interrupt}
	go func() {
		for {
			buf := make([]byte, 256)
			n, err := in.Read(buf)
			b := buf[:n]
			if i := strings.IndexByte(string(b), 3); i >= 0 {
				if k.interrupt() {
					b = []byte(strings.ReplaceAll(string(b), "\x03", ""))
				} else {
					k.mu.Lock()
					k.interrupted = true
					k.mu.Unlock()
					// Enter ends the line being typed; the shell then
					// drops it.
					b = []byte(strings.ReplaceAll(string(b), "\x03", "\r"))
				}
			}
			if len(b) > 0 {
				k.data <- b
			}
			if err != nil {
				k.err = err
				close(k.data)
				return
			}
		}
	}()
	return k
}

func (k *ttyKeys) Read(p []byte) (int, error) {
	if len(k.pending) == 0 {
		select {
		case b, ok := <-k.data:
			if !ok {
				return 0, k.err
			}
			k.pending = b
		case <-k.ctx.Done():
			return 0, k.ctx.Err()
		}
	}
	n := copy(p, k.pending)
	k.pending = k.pending[n:]
	return n, nil
}

// takeInterrupt reports (once) that Ctrl-C ended the line just read.
func (k *ttyKeys) takeInterrupt() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	was := k.interrupted
	k.interrupted = false
	return was
}

func (k *ttyKeys) interruptPending() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.interrupted
}

// sqlHistory is the shell's history, kept in ~/.borealis_history across
// sessions.
type sqlHistory struct {
	keys    *ttyKeys
	entries []string // oldest first
	file    *os.File // nil if the history file cannot be written
}

func loadSQLHistory(keys *ttyKeys) *sqlHistory {
	h := &sqlHistory{keys: keys}
	home, err := os.UserHomeDir()
	if err != nil {
		return h
	}
	path := filepath.Join(home, sqlHistoryFile)
	if b, err := os.ReadFile(path); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.TrimSpace(l) != "" {
				h.entries = append(h.entries, l)
			}
		}
		if len(h.entries) > sqlHistoryMax {
			h.entries = h.entries[len(h.entries)-sqlHistoryMax:]
			// Rewritten, so the file does not grow without bound.
			os.WriteFile(path, []byte(strings.Join(h.entries, "\n")+"\n"), 0o600)
		}
	}
	h.file, _ = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	return h
}

func (h *sqlHistory) Add(entry string) {
	// A line ended by Ctrl-C was dropped, not entered.
	if h.keys.interruptPending() || strings.TrimSpace(entry) == "" {
		return
	}
	if n := len(h.entries); n > 0 && h.entries[n-1] == entry {
		return
	}
	h.entries = append(h.entries, entry)
	if h.file != nil {
		fmt.Fprintln(h.file, entry)
	}
}

func (h *sqlHistory) Len() int { return len(h.entries) }

func (h *sqlHistory) At(i int) string { return h.entries[len(h.entries)-1-i] }
