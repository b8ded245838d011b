package broker

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzLaunchTimeout: KERNEL_LAUNCH_TIMEOUT is a client's string. Whatever
// it holds, the answer is a refusal that names the variable, or a timeout
// that is positive and within the operator's maximum.
func FuzzLaunchTimeout(f *testing.F) {
	for _, s := range []string{"", "30", " 2.5 ", "0", "-1", "NaN", "Inf", "-Inf", "1e300", "9223372037", "0x10", "1_000", "1e-10"} {
		f.Add(s)
	}
	p := EnvPolicy{DefaultLaunchTimeout: 40 * time.Second, MaxLaunchTimeout: 10 * time.Minute}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := p.LaunchTimeout(map[string]string{EnvLaunchTimeout: s})
		if err != nil {
			if !errors.Is(err, ErrBadEnv) || !strings.Contains(err.Error(), EnvLaunchTimeout) {
				t.Fatalf("%q: refusal that does not name %s: %v", s, EnvLaunchTimeout, err)
			}
			return
		}
		if d <= 0 || d > p.MaxLaunchTimeout {
			t.Fatalf("%q: timeout %v outside (0, %v]", s, d, p.MaxLaunchTimeout)
		}
	})
}

// FuzzEventQuery: the filters of GET /api/events (type, since, until) are
// a client's strings. A refusal is a bad request that names the option; a
// relative time lies in the past, never after now; every subject of the
// filter is one the events stream holds.
func FuzzEventQuery(f *testing.F) {
	for _, s := range [][2]string{{"started,died", "2h"}, {"", "7d"}, {"x", "2026-11-25"}, {" claimed ", "2026-11-25T10:00:00Z"},
		{",", "1e300d"}, {"started", "Infd"}, {"", "NaNd"}, {"", "-5m"}, {"", "9999999999h"}, {"", "2562048h"}, {"", "0x1p70d"}} {
		f.Add(s[0], s[1])
	}
	now := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, types, when string) {
		ts, err := ParseEventTypes("type", types)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) || !strings.HasPrefix(err.Error(), "type: ") {
				t.Fatalf("%q: %v", types, err)
			}
		}
		at, err := ParseTime("since", when, now)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) || !strings.HasPrefix(err.Error(), "since: ") {
				t.Fatalf("%q: %v", when, err)
			}
		} else if at.After(now) && !looksAbsolute(when) {
			t.Fatalf("%q: a relative time %v after now %v", when, at, now)
		}
		for _, subj := range (EventFilter{Kernel: "k1", Types: ts}).Subjects() {
			if !strings.HasPrefix(subj, "kb.evt.k1.") || strings.ContainsAny(subj, " \t\r\n>") || strings.Count(subj, ".") != 3 {
				t.Fatalf("types %q: subject %q", types, subj)
			}
		}
	})
}

// looksAbsolute: the layouts ParseTime reads as dates all start with a
// four-digit year and a dash.
func looksAbsolute(s string) bool {
	s = strings.TrimSpace(s)
	return len(s) >= 5 && s[4] == '-'
}
