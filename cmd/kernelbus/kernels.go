package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kernelbus/kernelbus/frontend/client"
)

const kernelsUsage = `Usage:
  kernelbus kernels list                 [flags]   kernels the gateway shows (id, kernelspec, state, connections, last activity)
  kernelbus kernels show      KERNEL_ID  [flags]   one kernel's model, as JSON
  kernelbus kernels interrupt KERNEL_ID  [flags]   interrupt a kernel
  kernelbus kernels restart   KERNEL_ID  [flags]   restart a kernel
  kernelbus kernels delete    KERNEL_ID… [flags]   shut kernels down

They talk to a front-end's REST API, as any Jupyter client does, so they
work against any front-end of an installation (and any Jupyter gateway).
Flags (also KB_URL, KB_TOKEN in the environment):
`

// cmdKernels runs the operator's kernel commands through the REST API.
func cmdKernels(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kernels", stderr)
	baseURL := fs.String("url", "http://127.0.0.1:8888", "base URL of a kernelbus front-end (its --base-url included)")
	token := fs.String("token", "", "the front-end's API token")
	asJSON := fs.Bool("json", false, "list: JSON instead of a table")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on each request (a restart waits for the kernel)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), kernelsUsage)
		fs.PrintDefaults()
	}
	if len(args) == 0 {
		fs.Usage()
		return errUsage
	}
	verb := args[0]
	if verb == "-h" || verb == "--help" || verb == "-help" || verb == "help" {
		fs.SetOutput(stdout)
		fs.Usage()
		return nil
	}
	ids, err := parseWithArgs(fs.FlagSet, args[1:])
	if err != nil {
		return err
	}
	c := &client.Client{BaseURL: *baseURL, Token: *token, HTTP: &http.Client{Timeout: *timeout}}
	ctx, cancel := signalContext()
	defer cancel()
	needIDs := func(n string) error {
		switch {
		case len(ids) == 0:
			return fmt.Errorf("kernels %s needs a kernel id (see kernelbus kernels list)", verb)
		case n == "one" && len(ids) > 1:
			return fmt.Errorf("kernels %s takes one kernel id, got %d", verb, len(ids))
		}
		return nil
	}
	switch verb {
	case "list", "ls":
		if len(ids) > 0 {
			return fmt.Errorf("kernels list takes no arguments, got %v", ids)
		}
		ms, err := c.Kernels(ctx)
		if err != nil {
			return apiErr(err, *baseURL)
		}
		if *asJSON {
			return writeJSON(stdout, ms)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKERNELSPEC\tSTATE\tCONNECTIONS\tLAST ACTIVITY")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", m.ID, m.Name, m.ExecutionState, m.Connections, m.LastActivity)
		}
		return tw.Flush()
	case "show", "get":
		if err := needIDs("one"); err != nil {
			return err
		}
		m, err := c.Kernel(ctx, ids[0])
		if err != nil {
			return apiErr(err, *baseURL)
		}
		return writeJSON(stdout, m)
	case "interrupt":
		if err := needIDs("one"); err != nil {
			return err
		}
		if err := c.Interrupt(ctx, ids[0]); err != nil {
			return apiErr(err, *baseURL)
		}
		fmt.Fprintln(stdout, "interrupted", ids[0])
		return nil
	case "restart":
		if err := needIDs("one"); err != nil {
			return err
		}
		m, err := c.Restart(ctx, ids[0])
		if err != nil {
			return apiErr(err, *baseURL)
		}
		fmt.Fprintln(stdout, "restarted", m.ID, "("+m.ExecutionState+")")
		return nil
	case "delete", "rm", "shutdown":
		if err := needIDs("many"); err != nil {
			return err
		}
		var failed []string
		for _, id := range ids {
			if err := c.DeleteKernel(ctx, id); err != nil {
				fmt.Fprintf(stderr, "kernelbus: delete %s: %v\n", id, apiErr(err, *baseURL))
				failed = append(failed, id)
				continue
			}
			fmt.Fprintln(stdout, "deleted", id)
		}
		if len(failed) > 0 {
			return fmt.Errorf("%d of %d kernels not deleted", len(failed), len(ids))
		}
		return nil
	}
	fmt.Fprintf(stderr, "kernelbus kernels: unknown command %q\n\n", verb)
	fs.Usage()
	return errUsage
}

// parseWithArgs parses flags that may come before, between or after the
// positional arguments, which it returns.
func parseWithArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	if err := parse(fs, nil); err != nil { // environment defaults
		return nil, err
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, errHelp
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		rest := fs.Args()
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// apiErr words a failed request for the operator.
func apiErr(err error, base string) error {
	var ae *client.APIError
	if errors.As(err, &ae) {
		if ae.Status == http.StatusUnauthorized {
			return fmt.Errorf("%s refused the request: pass the front-end's token with --token or KB_TOKEN (%s)", base, ae.Message)
		}
		return fmt.Errorf("%d %s: %s", ae.Status, ae.Reason, ae.Message)
	}
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Client.Timeout") {
		return fmt.Errorf("%s did not answer in time (--timeout): %w", base, err)
	}
	return fmt.Errorf("%w (is kernelbus serving at %s? see --url)", err, base)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
