package broker

import (
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxEnvValue is the longest env value a client may pass.
const MaxEnvValue = 4096

// DefaultMaxEnvBytes is the default of EnvPolicy.MaxTotalBytes: 64 KiB,
// far below what exec accepts (a larger env made starts fail with "argument
// list too long") and far above what any Jupyter client sends.
const DefaultMaxEnvBytes = 64 << 10

// Well-known KERNEL_* variables.
const (
	EnvKernelID       = "KERNEL_ID"
	EnvUsername       = "KERNEL_USERNAME"
	EnvLaunchTimeout  = "KERNEL_LAUNCH_TIMEOUT"
	EnvKernelLanguage = "KERNEL_LANGUAGE"
	EnvKernelGateway  = "KERNEL_GATEWAY"
)

// EnvPolicy decides which client-sent variables reach a kernel.
type EnvPolicy struct {
	// Allowed names variables other than KERNEL_* that clients may pass;
	// "*" allows all. Default: none.
	Allowed []string
	// DefaultLaunchTimeout applies when the client sends none. Default 40s.
	DefaultLaunchTimeout time.Duration
	// MaxLaunchTimeout caps KERNEL_LAUNCH_TIMEOUT. Default 10m.
	MaxLaunchTimeout time.Duration
	// MaxTotalBytes caps the client's env as sent (names and values,
	// dropped ones included). Default DefaultMaxEnvBytes; <0: no cap.
	MaxTotalBytes int
}

// Filter returns the variables of env that may reach the kernel, or a
// 400 error naming the first offending key. Keys outside KERNEL_* and the
// allow-list are dropped, as JEG drops them: clients such as jupyter_server
// send their own extras.
func (p EnvPolicy) Filter(env map[string]string) (map[string]string, error) {
	if limit := p.maxTotal(); limit > 0 {
		total := 0
		for k, v := range env {
			total += len(k) + len(v)
		}
		if total > limit {
			return nil, Errorf(ErrBadEnv, "env is %d bytes (names and values), the limit is %d: send fewer or shorter variables", total, limit)
		}
	}
	out := make(map[string]string)
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same key every time
	for _, k := range keys {
		v := env[k]
		if !p.allowed(k) {
			continue
		}
		if !validEnvName(k) {
			return nil, Errorf(ErrBadEnv, "env key %q is not a valid variable name (letters, digits and _ only, not starting with a digit)", k)
		}
		if err := checkEnvValue(k, v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

func (p EnvPolicy) maxTotal() int {
	if p.MaxTotalBytes == 0 {
		return DefaultMaxEnvBytes
	}
	return p.MaxTotalBytes
}

func (p EnvPolicy) allowed(k string) bool {
	if strings.HasPrefix(k, "KERNEL_") {
		return true
	}
	for _, a := range p.Allowed {
		if a == "*" || a == k {
			return true
		}
	}
	return false
}

func checkEnvValue(k, v string) error {
	if len(v) > MaxEnvValue {
		return Errorf(ErrBadEnv, "env %s: value is %d characters long, the limit is %d", k, len(v), MaxEnvValue)
	}
	for _, c := range []struct{ s, name string }{
		{"$", "'$'"}, {"`", "a backtick"}, {"\r", "a carriage return"}, {"\n", "a line feed"}, {"\x00", "a NUL byte"},
	} {
		if strings.Contains(v, c.s) {
			return Errorf(ErrBadEnv, "env %s: value contains %s, which is not allowed (no $, backticks, CR, LF or NUL)", k, c.name)
		}
	}
	// Other control characters and Unicode line breaks: NEL, LS and PS end
	// a line in YAML and in some shells' and loggers' eyes, and no value a
	// kernel needs holds one. Tabs stay (Spark options use them).
	if !utf8.ValidString(v) {
		return Errorf(ErrBadEnv, "env %s: value is not valid UTF-8", k)
	}
	for _, r := range v {
		if r != '\t' && (unicode.IsControl(r) || r == '\u2028' || r == '\u2029') {
			return Errorf(ErrBadEnv, "env %s: value contains the control character %U, which is not allowed (no control characters or line separators)", k, r)
		}
	}
	return nil
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// LaunchTimeout reads KERNEL_LAUNCH_TIMEOUT (seconds, may be fractional).
func (p EnvPolicy) LaunchTimeout(env map[string]string) (time.Duration, error) {
	def := p.DefaultLaunchTimeout
	if def <= 0 {
		def = 40 * time.Second
	}
	max := p.MaxLaunchTimeout
	if max <= 0 {
		max = 10 * time.Minute
	}
	s, ok := env[EnvLaunchTimeout]
	if !ok || strings.TrimSpace(s) == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f <= 0 {
		return 0, Errorf(ErrBadEnv, "env %s: %q is not a positive number of seconds", EnvLaunchTimeout, s)
	}
	d := time.Duration(f * float64(time.Second))
	if d > max {
		d = max
	}
	return d, nil
}
