package broker

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// EventTypes lists every event type, for validation and help texts.
var EventTypes = []string{
	EvRequested, EvClaimed, EvSubmitted, EvStarted, EvStartFailed, EvInterrupted,
	EvRestartRequested, EvRestarted, EvDied, EvAutoRestarted, EvCulled,
	EvShutdownRequest, EvTerminated, EvLost, EvClientConnected, EvClientLeft,
	EvWarmStarted, EvWarmClaimed, EvWarmReaped,
}

// EventFilter selects events for replay.
type EventFilter struct {
	Kernel string
	User   string
	Types  []string
	Since  time.Time
	Until  time.Time
}

// Subjects returns the KB_EVENTS subjects that cover the filter, so the
// server does the filtering on kernel and type.
func (f EventFilter) Subjects() []string {
	k := f.Kernel
	if k == "" {
		k = "*"
	}
	if len(f.Types) == 0 {
		return []string{"kb.evt." + k + ".*"}
	}
	out := make([]string, 0, len(f.Types))
	for _, t := range f.Types {
		out = append(out, SubjectEvent(k, t))
	}
	return out
}

// Match applies the parts of the filter the subjects cannot express.
func (f EventFilter) Match(e *Event) bool {
	if f.User != "" && e.User != f.User {
		return false
	}
	if !f.Since.IsZero() && e.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && e.Time.After(f.Until) {
		return false
	}
	return true
}

// ParseEventTypes reads a comma-separated list of types. flag names the
// option in errors.
func ParseEventTypes(flag, s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	known := map[string]bool{}
	for _, t := range EventTypes {
		known[t] = true
	}
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if !known[t] {
			return nil, Errorf(ErrBadRequest, "%s: unknown event type %q; known types: %s", flag, t, strings.Join(sortedCopy(EventTypes), ", "))
		}
		out = append(out, t)
	}
	return out, nil
}

// ParseTime reads an absolute or relative time: RFC 3339
// (2026-11-25T10:00:00Z), a date (2026-11-25, UTC midnight), or a duration
// before now (90m, 2h, 7d). flag names the option in errors.
func ParseTime(flag, s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	if strings.HasSuffix(s, "d") {
		var days float64
		if _, err := fmt.Sscanf(s, "%gd", &days); err == nil && days >= 0 {
			return now.Add(-time.Duration(days * 24 * float64(time.Hour))).UTC(), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d).UTC(), nil
	}
	return time.Time{}, Errorf(ErrBadRequest, "%s: cannot read %q as a time; use RFC 3339 (2026-11-25T10:00:00Z), a date (2026-11-25) or an age (90m, 2h, 7d)", flag, s)
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}
