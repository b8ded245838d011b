package workers

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options reads a backend's worker options (BackendConfig.Options), the
// same way for every backend: each getter names a key the backend knows
// and leaves its destination alone when the key is absent or empty; Err
// then refuses a value that does not parse and a key no getter asked for,
// so a misspelt option fails the worker's start instead of being ignored.
type Options struct {
	rm    string
	m     map[string]string
	known []string
	errs  []error
}

// ReadOptions starts reading the options of resource manager rm.
func ReadOptions(rm string, m map[string]string) *Options {
	return &Options{rm: rm, m: m}
}

// value returns key's value, if set, and records key as known.
func (o *Options) value(key string) (string, bool) {
	o.known = append(o.known, key)
	v := o.m[key]
	return v, v != ""
}

func (o *Options) bad(key, v, want string) {
	o.errs = append(o.errs, fmt.Errorf("%s: option %s=%q is not %s", o.rm, key, v, want))
}

// String reads key as is.
func (o *Options) String(key string, dst *string) {
	if v, ok := o.value(key); ok {
		*dst = v
	}
}

// List reads key as a comma-separated list; blank items are dropped.
func (o *Options) List(key string, dst *[]string) {
	v, ok := o.value(key)
	if !ok {
		return
	}
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	*dst = out
}

// Bool reads key as true/false (or 1/0, t/f as strconv does).
func (o *Options) Bool(key string, dst *bool) {
	if v, ok := o.value(key); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			o.bad(key, v, "true or false")
			return
		}
		*dst = b
	}
}

// Duration reads key as a positive Go duration (10s, 2m).
func (o *Options) Duration(key string, dst *time.Duration) {
	if v, ok := o.value(key); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			o.bad(key, v, "a positive duration such as 10s")
			return
		}
		*dst = d
	}
}

// Err reports every bad value and every unknown key, naming the known ones.
func (o *Options) Err() error {
	var unknown []string
	for k := range o.m {
		if !slices.Contains(o.known, k) {
			unknown = append(unknown, k)
		}
	}
	errs := o.errs
	if len(unknown) > 0 {
		sort.Strings(unknown)
		known := slices.Clone(o.known)
		sort.Strings(known)
		errs = append(errs, fmt.Errorf("%s: unknown options %v (known: %v)", o.rm, unknown, known))
	}
	return errors.Join(errs...)
}
