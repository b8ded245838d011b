package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/workers/duties"
	"github.com/rs/zerolog"
)

// dutyFlags configure the installation-wide duties (idle culler, lost
// detector) that serve, frontend and worker processes all take part in;
// only the holder of the duties lease acts.
type dutyFlags struct {
	cullIdle      secondsFlag
	cullInterval  secondsFlag
	cullConnected bool
	cullBusy      bool
	lostAfter     secondsFlag
	lostInterval  secondsFlag
}

func (f *dutyFlags) register(fs *flagSet) {
	f.cullInterval = secondsFlag(300 * time.Second)
	f.lostAfter = secondsFlag(60 * time.Second)
	f.lostInterval = secondsFlag(15 * time.Second)
	fs.Var(&f.cullIdle, "cull-idle-timeout", "shut down kernels idle this long (seconds or a duration such as 2h; 0: never), as jupyter_server's cull_idle_timeout")
	fs.Var(&f.cullInterval, "cull-interval", "how often to look for idle kernels (cull_interval)")
	fs.BoolVar(&f.cullConnected, "cull-connected", false, "also cull idle kernels that have a connected websocket (cull_connected)")
	fs.BoolVar(&f.cullBusy, "cull-busy", false, "also cull kernels that are busy (cull_busy)")
	fs.Var(&f.lostAfter, "lost-after", "declare a running kernel lost when its launcher has not answered pings this long (0: never)")
	fs.Var(&f.lostInterval, "lost-interval", "how often launchers are pinged")
}

// duties binds the duties lease; Start campaigns for it. holder names this
// process.
func (f *dutyFlags) duties(ctx context.Context, bus *kbjs.Bus, holder string, log zerolog.Logger) (*duties.Duties, error) {
	lost := time.Duration(f.lostAfter)
	if lost == 0 {
		lost = -1
	}
	d, err := duties.New(ctx, duties.Config{
		Holder:          holder,
		CullIdleTimeout: time.Duration(f.cullIdle),
		CullInterval:    time.Duration(f.cullInterval),
		CullConnected:   f.cullConnected,
		CullBusy:        f.cullBusy,
		LostAfter:       lost,
		LostInterval:    time.Duration(f.lostInterval),
	}, bus, log)
	if err != nil {
		return nil, fmt.Errorf("duties: %w", err)
	}
	return d, nil
}

// retentionFlags set the audit log's retention. Zero keeps what the
// installation has (400 days and 10 GiB when it is created).
type retentionFlags struct {
	maxAge   secondsFlag
	maxBytes sizeFlag
}

func (f *retentionFlags) register(fs *flagSet) {
	fs.Var(&f.maxAge, "events-max-age", "keep audit events this long (a duration such as 9600h or 400d; 0: keep the installation's, 400d when new)")
	fs.Var(&f.maxBytes, "events-max-bytes", "bound the audit log's size (such as 10GiB or 500MB; 0: keep the installation's, 10GiB when new); the oldest events go first")
}

func (f *retentionFlags) layout(l kbjs.Layout) kbjs.Layout {
	l.EventsMaxAge, l.EventsMaxBytes = time.Duration(f.maxAge), int64(f.maxBytes)
	return l
}

// secondsFlag is a duration given as Go duration (90s, 2h), days (7d) or
// plain seconds (600), as Jupyter's settings are.
type secondsFlag time.Duration

func (s *secondsFlag) String() string { return time.Duration(*s).String() }

func (s *secondsFlag) Set(v string) error {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
		*s = secondsFlag(time.Duration(n * float64(time.Second)))
		return nil
	}
	if days, ok := strings.CutSuffix(v, "d"); ok {
		if n, err := strconv.ParseFloat(days, 64); err == nil && n >= 0 {
			*s = secondsFlag(time.Duration(n * 24 * float64(time.Hour)))
			return nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("%q is not a duration: use seconds (600), a duration (90s, 2h) or days (7d)", v)
	}
	*s = secondsFlag(d)
	return nil
}

// sizeFlag is a byte count with an optional unit (KB, MB, GB, TB and
// their KiB... forms).
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(v string) error {
	t := strings.ToUpper(strings.TrimSpace(v))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}} {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a size: use bytes or a number with KB, MB, GB, TB, KiB, MiB, GiB or TiB", v)
	}
	*s = sizeFlag(n * float64(mult))
	return nil
}
