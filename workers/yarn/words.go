package yarn

import (
	"errors"
	"os"
	"strings"
)

// expand fills ${NAME}, ${NAME:-default} and $NAME from env (JEG specs write
// SPARK_OPTS for a shell), then from fallback when it is not nil; unknown
// names become empty, as in a shell. Substituted text is not expanded again.
func expand(s string, env map[string]string, fallback func(string) (string, bool)) string {
	get := func(n string) string {
		if v, ok := env[n]; ok {
			return v
		}
		if fallback != nil {
			if v, ok := fallback(n); ok {
				return v
			}
		}
		return ""
	}
	return os.Expand(s, func(name string) string {
		if n, def, ok := strings.Cut(name, ":-"); ok {
			if v := get(n); v != "" {
				return v
			}
			return def
		}
		return get(name)
	})
}

// shellWords splits s as a POSIX shell would (quotes and backslashes), with
// no expansion.
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune
	esc := false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			if r == '"' {
				quote = 0
			} else if r == '\\' {
				esc = true
			} else {
				cur.WriteRune(r)
			}
		case r == '\\':
			esc, inWord = true, true
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || esc {
		return nil, errors.New("unterminated quote or escape")
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
