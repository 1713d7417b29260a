package sqlclient

import (
	"strings"
	"unicode/utf8"
)

// Split cuts a SQL script into its statements at the semicolons that are
// outside string literals, quoted identifiers and comments. A CREATE
// TRIGGER's body holds semicolons of its own: such a statement ends at a
// semicolon that follows END, as SQLite's sqlite3_complete decides. The
// statements are returned trimmed, without their semicolon, and empty ones
// (";;", or nothing but comments) are dropped. rest is what follows the last
// complete statement: an unfinished statement, or blank (see Blank).
func Split(script string) (statements []string, rest string) {
	start := 0
	var st stmtState
	lx := lexer{src: script}
	for {
		tok, ok := lx.next()
		if !ok {
			break
		}
		if tok.kind != tokSemicolon {
			st.see(tok)
			continue
		}
		if st.inTriggerBody() {
			st.see(tok)
			continue
		}
		text := strings.TrimSpace(script[start:tok.pos])
		if st.tokens > 0 {
			statements = append(statements, text)
		}
		start = tok.pos + 1
		st = stmtState{}
	}
	return statements, script[start:]
}

// Blank reports whether s holds no SQL: only spaces and complete comments.
func Blank(s string) bool {
	lx := lexer{src: s}
	_, ok := lx.next()
	return !ok && !lx.unfinished
}

// Kind is what a statement does, as far as where it is sent is concerned.
type Kind int

const (
	// Write: anything that may change the database or its schema; it runs
	// on the writer through Execute.
	Write Kind = iota
	// Read: returns rows and changes nothing (SELECT, VALUES, WITH ...
	// SELECT, EXPLAIN, PRAGMA without '='); it runs through Query.
	Read
	Begin    // BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION]
	Commit   // COMMIT or END [TRANSACTION]
	Rollback // ROLLBACK [TRANSACTION], not ROLLBACK TO (which is a Write)
	// Savepoint and Release carry the savepoint's name.
	Savepoint
	Release
)

func (k Kind) String() string {
	return [...]string{"write", "read", "begin", "commit", "rollback", "savepoint", "release"}[k]
}

// Classify tells what a single statement is. name is the savepoint's name
// for Savepoint and Release, unquoted.
func Classify(statement string) (kind Kind, name string) {
	var words []token
	lx := lexer{src: statement}
	for {
		tok, ok := lx.next()
		if !ok {
			break
		}
		// SQLite skips empty statements before the first: ";COMMIT" is a
		// COMMIT.
		if len(words) == 0 && tok.kind == tokSemicolon {
			continue
		}
		words = append(words, tok)
	}
	if len(words) == 0 {
		return Write, ""
	}
	kw := func(i int) string {
		if i < len(words) && words[i].kind == tokWord {
			return strings.ToUpper(words[i].text)
		}
		return ""
	}
	switch kw(0) {
	case "SELECT", "VALUES", "EXPLAIN":
		return Read, ""
	case "WITH":
		// The statement is what follows the common table expressions: the
		// first statement keyword outside their parentheses.
		depth := 0
		for i := 1; i < len(words); i++ {
			switch words[i].text {
			case "(":
				depth++
				continue
			case ")":
				depth--
				continue
			}
			if depth != 0 {
				continue
			}
			switch kw(i) {
			case "SELECT", "VALUES":
				return Read, ""
			case "INSERT", "UPDATE", "DELETE", "REPLACE":
				return Write, ""
			}
		}
		return Write, ""
	case "PRAGMA":
		for _, w := range words {
			if w.kind == tokOther && w.text == "=" {
				return Write, ""
			}
		}
		return Read, ""
	case "BEGIN":
		return Begin, ""
	case "COMMIT", "END":
		return Commit, ""
	case "ROLLBACK":
		for i := 1; i < len(words); i++ {
			if kw(i) == "TO" {
				return Write, ""
			}
		}
		return Rollback, ""
	case "SAVEPOINT":
		if len(words) > 1 {
			return Savepoint, unquote(words[1])
		}
		return Savepoint, ""
	case "RELEASE":
		i := 1
		if kw(i) == "SAVEPOINT" && len(words) > 2 {
			i++
		}
		if i < len(words) {
			return Release, unquote(words[i])
		}
		return Release, ""
	}
	return Write, ""
}

// Keyword is the statement's first word, upper case ("" if it has none).
func Keyword(statement string) string {
	lx := lexer{src: statement}
	tok, ok := lx.next()
	for ok && tok.kind == tokSemicolon {
		tok, ok = lx.next()
	}
	if ok && tok.kind == tokWord {
		return strings.ToUpper(tok.text)
	}
	return ""
}

func unquote(t token) string {
	s := t.text
	if t.kind == tokQuoted && len(s) >= 2 {
		q := s[0]
		closing := q
		if q == '[' {
			return s[1 : len(s)-1]
		}
		return strings.ReplaceAll(s[1:len(s)-1], string([]byte{closing, closing}), string(closing))
	}
	return s
}

type tokenKind int

const (
	tokWord      tokenKind = iota // keyword, identifier or number
	tokQuoted                     // '...', "...", `...` or [...]
	tokSemicolon                  // ;
	tokOther                      // any other punctuation, one character
)

type token struct {
	kind tokenKind
	text string
	pos  int
}

// lexer yields the tokens of SQL text, skipping spaces and comments.
type lexer struct {
	src string
	pos int
	// unfinished: the text ended inside a literal, a quoted identifier or a
	// /* comment.
	unfinished bool
}

func (l *lexer) next() (token, bool) {
	s := l.src
	for l.pos < len(s) {
		c := s[l.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.pos++
		case c == '-' && strings.HasPrefix(s[l.pos:], "--"):
			if i := strings.IndexByte(s[l.pos:], '\n'); i >= 0 {
				l.pos += i + 1
			} else {
				l.pos = len(s)
			}
		case c == '/' && strings.HasPrefix(s[l.pos:], "/*"):
			if i := strings.Index(s[l.pos+2:], "*/"); i >= 0 {
				l.pos += 2 + i + 2
			} else {
				l.pos = len(s)
				l.unfinished = true
			}
		case c == '\'' || c == '"' || c == '`':
			start := l.pos
			i := l.pos + 1
			for {
				j := strings.IndexByte(s[i:], c)
				if j < 0 {
					l.pos = len(s)
					l.unfinished = true
					return token{}, false
				}
				i += j + 1
				// A doubled quote is the quote character itself.
				if i < len(s) && s[i] == c {
					i++
					continue
				}
				break
			}
			l.pos = i
			return token{kind: tokQuoted, text: s[start:i], pos: start}, true
		case c == '[':
			start := l.pos
			j := strings.IndexByte(s[l.pos:], ']')
			if j < 0 {
				l.pos = len(s)
				l.unfinished = true
				return token{}, false
			}
			l.pos += j + 1
			return token{kind: tokQuoted, text: s[start:l.pos], pos: start}, true
		case c == ';':
			l.pos++
			return token{kind: tokSemicolon, text: ";", pos: l.pos - 1}, true
		case isWordByte(c):
			start := l.pos
			for l.pos < len(s) && isWordByte(s[l.pos]) {
				l.pos++
			}
			return token{kind: tokWord, text: s[start:l.pos], pos: start}, true
		default:
			start := l.pos
			_, n := utf8.DecodeRuneInString(s[l.pos:])
			l.pos += n
			return token{kind: tokOther, text: s[start:l.pos], pos: start}, true
		}
	}
	return token{}, false
}

func isWordByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// stmtState follows one statement's tokens far enough to know whether a
// semicolon ends it.
type stmtState struct {
	tokens int
	// trigger: the statement is [EXPLAIN [QUERY PLAN]] CREATE [TEMP]
	// TRIGGER; lead counts the words of that prefix seen so far.
	trigger, notTrigger bool
	lead                []string
	// lastEnd: the previous token was END.
	lastEnd bool
}

func (s *stmtState) see(t token) {
	s.tokens++
	word := ""
	if t.kind == tokWord {
		word = strings.ToUpper(t.text)
	}
	if !s.trigger && !s.notTrigger {
		s.lead = append(s.lead, word)
		switch {
		case word == "TRIGGER" && len(s.lead) >= 2 && s.lead[len(s.lead)-2] == "CREATE",
			word == "TRIGGER" && len(s.lead) >= 3 && s.lead[len(s.lead)-3] == "CREATE" && (s.lead[len(s.lead)-2] == "TEMP" || s.lead[len(s.lead)-2] == "TEMPORARY"):
			s.trigger = true
		case word == "EXPLAIN" || word == "QUERY" || word == "PLAN" || word == "CREATE" || word == "TEMP" || word == "TEMPORARY":
		default:
			s.notTrigger = true
		}
	}
	s.lastEnd = word == "END"
}

func (s *stmtState) inTriggerBody() bool { return s.trigger && !s.lastEnd }
