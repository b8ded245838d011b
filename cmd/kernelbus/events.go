package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/access"
)

func cmdEvents(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("events", stderr)
	kernel := fs.String("kernel", "", "only this kernel id")
	user := fs.String("user", "", "only kernels of this KERNEL_USERNAME")
	types := fs.String("type", "", "only these event types, comma separated ("+strings.Join(broker.EventTypes, ", ")+")")
	since := fs.String("since", "", "from this time: RFC 3339, a date, or an age such as 2h or 7d")
	until := fs.String("until", "", "up to this time (same forms as --since)")
	follow := fs.Bool("follow", false, "keep printing new events as they happen")
	asJSON := fs.Bool("json", false, "JSON Lines, one event per line")
	summary := fs.Bool("summary", false, "one line per kernel: start, end, duration, outcome")
	natsURL := fs.String("nats", "", "NATS URLs of the installation (default: the one `kernelbus serve --data-dir` recorded)")
	natsToken := fs.String("nats-token", "", "NATS token")
	natsCreds := fs.String("nats-creds", "", "NATS credentials file")
	natsCA := fs.String("nats-ca", "", "CA certificate (PEM) that signed the NATS servers' TLS certificates (default: the one `kernelbus serve --data-dir` recorded)")
	dataDir := fs.String("data-dir", defaultDataDir(), "data folder of a `kernelbus serve` installation")
	if err := parse(fs.FlagSet, args); err != nil {
		return err
	}
	now := time.Now()
	f := broker.EventFilter{Kernel: *kernel, User: *user}
	var err error
	if f.Types, err = broker.ParseEventTypes("--type", *types); err != nil {
		return err
	}
	if f.Since, err = broker.ParseTime("--since", *since, now); err != nil {
		return err
	}
	if f.Until, err = broker.ParseTime("--until", *until, now); err != nil {
		return err
	}
	if *summary && *follow {
		return errors.New("--summary and --follow do not go together: a summary needs the end of the log")
	}
	url, creds, ca := *natsURL, *natsCreds, *natsCA
	if url == "" {
		var installCreds, installCA string
		url, installCreds, installCA, err = readInstallation(*dataDir)
		if err != nil {
			return err
		}
		if creds == "" {
			creds = installCreds
		}
		if ca == "" {
			ca = installCA
		}
	}
	nc, err := kbjs.Connect(kbjs.ConnectOptions{URLs: url, Token: *natsToken, CredsFile: creds, CAFile: ca, Name: "kernelbus-events"})
	if err != nil {
		return fmt.Errorf("%w (is kernelbus running? point --nats at its NATS servers)", err)
	}
	defer nc.Close()
	js, err := kbjs.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()

	w := bufio.NewWriter(stdout)
	defer w.Flush()
	var print func(broker.Event) error
	var sum *summarizer
	switch {
	case *summary:
		sum = &summarizer{kernels: map[string]*kernelSummary{}}
		print = sum.add
	case *asJSON:
		enc := json.NewEncoder(w)
		print = func(e broker.Event) error {
			if err := enc.Encode(e); err != nil {
				return err
			}
			if *follow {
				return w.Flush()
			}
			return nil
		}
	default:
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tTYPE\tKERNEL\tSPEC\tUSER\tRM\tHOST\tHANDLE\tBY\tREASON")
		print = func(e broker.Event) error {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"),
				e.Type, e.Kernel, dash(e.Spec), dash(e.User), dash(e.RM), dash(e.Host), dash(compactJSON(e.Handle)),
				dash(by(e)), dash(oneLine(e.Reason)))
			if *follow {
				_ = tw.Flush()
				return w.Flush()
			}
			return nil
		}
		defer tw.Flush()
	}
	err = kbjs.ReadEvents(ctx, js, f, *follow, print)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	if err != nil {
		return err
	}
	if sum != nil {
		sum.print(w, now)
	}
	return nil
}

// readInstallation reads how `kernelbus serve --data-dir dir` can be
// reached: its NATS URL, the admin's credentials file and the bus CA.
func readInstallation(dir string) (url, creds, ca string, err error) {
	cf, err := readConnFile(filepath.Join(dir, "nats.conn"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", "", "", fmt.Errorf("no kernelbus installation found in %s: pass --data-dir of a running `kernelbus serve`, or --nats URL (and --nats-creds) of the installation's NATS", dir)
		}
		return "", "", "", err
	}
	if cf.authDir != "" {
		creds = filepath.Join(cf.authDir, access.AdminCreds)
	}
	return cf.url, creds, cf.ca, nil
}

type kernelSummary struct {
	id, spec, user, rm, host, outcome string
	start, end                        time.Time
	restarts                          int
}

type summarizer struct {
	kernels map[string]*kernelSummary
	order   []string
}

func (s *summarizer) add(e broker.Event) error {
	k := s.kernels[e.Kernel]
	if k == nil {
		k = &kernelSummary{id: e.Kernel, start: e.Time, outcome: "starting"}
		s.kernels[e.Kernel] = k
		s.order = append(s.order, e.Kernel)
	}
	k.spec, k.user, k.rm = firstNonEmpty(k.spec, e.Spec), firstNonEmpty(k.user, e.User), firstNonEmpty(k.rm, e.RM)
	if e.Host != "" {
		k.host = e.Host
	}
	switch e.Type {
	case broker.EvStarted:
		if k.outcome == "starting" {
			k.outcome = "running"
		}
	case broker.EvAutoRestarted, broker.EvRestarted:
		k.restarts++
	case broker.EvStartFailed:
		k.outcome, k.end = "start failed", e.Time
	case broker.EvCulled:
		k.outcome = "culled"
	case broker.EvLost:
		k.outcome, k.end = "lost", e.Time
	case broker.EvWarmReaped:
		k.outcome, k.end = "warm, reaped", e.Time
	case broker.EvDied:
		if strings.HasPrefix(e.Reason, "gave up") {
			k.outcome, k.end = "dead", e.Time
		}
	case broker.EvTerminated:
		// The first ending says how it ended (culled, lost, dead); a
		// terminated that follows only says when what was left stopped.
		if k.outcome == "starting" || k.outcome == "running" {
			k.outcome = "terminated"
		}
		k.end = e.Time
	}
	return nil
}

func (s *summarizer) print(w io.Writer, now time.Time) {
	sort.SliceStable(s.order, func(i, j int) bool { return s.kernels[s.order[i]].start.Before(s.kernels[s.order[j]].start) })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KERNEL\tSPEC\tUSER\tRM\tHOST\tSTART\tEND\tDURATION\tRESTARTS\tOUTCOME")
	for _, id := range s.order {
		k := s.kernels[id]
		end, dur := "-", now.Sub(k.start)
		if !k.end.IsZero() {
			end, dur = k.end.Local().Format("2006-01-02 15:04:05"), k.end.Sub(k.start)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", k.id, dash(k.spec), dash(k.user), dash(k.rm), dash(k.host),
			k.start.Local().Format("2006-01-02 15:04:05"), end, dur.Round(time.Millisecond), k.restarts, k.outcome)
	}
	tw.Flush()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func compactJSON(b json.RawMessage) string {
	if len(b) == 0 {
		return ""
	}
	return string(b)
}

// by names who caused an event: the part that wrote it, and the identity
// whose request it served when there was one ("alice@frontend").
func by(e broker.Event) string {
	if e.Actor != "" {
		return e.Actor + "@" + e.Source
	}
	return e.Source
}
