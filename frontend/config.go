// Package frontend is the Jupyter gateway that clients talk to: the
// kernelspec, kernel and session REST API of Jupyter Server / Enterprise
// Gateway and the kernel websocket, served by Fiber. It keeps no state of
// its own: kernel records, activity, websocket sessions and their replay
// cursors live on the bus, so any number of front-ends can serve the same
// kernels and a client may reconnect to any of them.
package frontend

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/kernelbus/kernelbus/jetstream/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a front-end. The zero value is usable.
type Config struct {
	// Token is the legacy shared secret clients send as "Authorization:
	// token T", "Authorization: Bearer T", Basic auth with T as the
	// password, or ?token=T. Its holder is the identity TokenUser, an
	// administrator that may start kernels for any KERNEL_USERNAME. It is
	// asked before Identities. Default "".
	Token string

	// TokenUser names the identity of Token. Default "admin".
	TokenUser string

	// Identities are the sources that prove who calls, asked in order
	// (after Token); the first that returns an identity wins. With no
	// source and no Token, every caller is an anonymous administrator:
	// the command line allows that only with --insecure-no-auth.
	// Default: none.
	Identities []auth.Source

	// AuthFailLimit is how many failed authentications one remote
	// address may make in AuthFailWindow before it gets 429 until the
	// window ends; negative: no limit. Default 30.
	AuthFailLimit int

	// AuthFailWindow is the window of AuthFailLimit. Default 1m.
	AuthFailWindow time.Duration

	// AuthorizedUsers, when not empty, are the only KERNEL_USERNAMEs
	// that may start kernels of specs whose process_proxy.config has no
	// authorized_users of its own (JEG's authorized_users). Default: any.
	AuthorizedUsers []string

	// UnauthorizedUsers may start no kernel at all; a spec's
	// unauthorized_users add to them (JEG's unauthorized_users, whose
	// default "root" is not copied: kernelbus never runs kernels as the
	// user name). Default: none.
	UnauthorizedUsers []string

	// AllowedEnv names the variables besides KERNEL_* that clients may pass
	// in a start request's env; "*" allows all. Others are dropped.
	// Default: none.
	AllowedEnv []string

	// AllowOrigin is the comma-separated list of browser origins allowed
	// to call the API cross-origin and to open kernel websockets, such as
	// "https://lab.example.com" or "https://*.example.com"; "*" allows any.
	// When set, CORS headers are sent for matching origins. Requests
	// without an Origin header (jupyter_server, nbclient, scripts) are
	// never refused by this check; a websocket whose Origin differs from
	// its Host is refused unless it matches. Default "" (same origin only).
	AllowOrigin string

	// Guard hardens the edge: Host allow-list, cross-site requests,
	// timeouts, websockets per caller, env size (guard.go).
	Guard GuardConfig

	// BaseURL prefixes every route, as Jupyter's base_url. Default "/".
	BaseURL string

	// DefaultLaunchTimeout bounds a kernel start when the client sends no
	// KERNEL_LAUNCH_TIMEOUT. Keep it below the client's request timeout
	// (jupyter_server: 42 s). Default 40s.
	DefaultLaunchTimeout time.Duration

	// MaxLaunchTimeout caps KERNEL_LAUNCH_TIMEOUT. Default 10m.
	MaxLaunchTimeout time.Duration

	// WSReadLimit is the largest websocket message accepted from a client;
	// a larger one closes the connection with 1009. Default 64 MiB.
	WSReadLimit int64
	// NoLiveOutput delivers kernel output to websockets from the KB_IO
	// consumer only. By default (false) each websocket also holds a core
	// NATS subscription that writes output as the launcher publishes it,
	// in the order of its per-run sequence, while the consumer fills
	// gaps, delivers large output, confirms the cursor and serves resumes
	// (wslive.go).
	NoLiveOutput bool
	// HeadersOnlyOutput, with live output, has a websocket that starts
	// with nothing to replay read its output consumer headers only and
	// fetch by sequence the bodies the live path did not write
	// (kbjs.Bus.OutputBody), so a body crosses to the front-end once.
	// Off by default: in the iopub benchmark the consumer, not the live
	// path, handles most messages, and a fetch each cost more serve CPU
	// than the body it saves (docs/benchmarks-notes.md).
	HeadersOnlyOutput bool
	// NoLiveInput leaves client messages unnumbered, so launchers take
	// them from their input consumer only. By default (false) each
	// websocket numbers what it sends (broker.HeaderInSeq) and the
	// launcher delivers a message as it is published, from its core
	// subscription, the stream filling gaps (kbjs.KernelLink.ConsumeInput).
	NoLiveInput bool
	// LiveConn opens the NATS connection live output subscriptions use,
	// kept apart from the bus's: live output has no flow control, so a
	// flood can get that connection cut off by the server, and then only
	// live delivery pauses while the bus's connection (consumers, records,
	// input) carries on and the stream fills the gap. The server closes it
	// at Stop. Default: a second connection with the bus's options
	// (kbjs.Sibling).
	LiveConn func() (*nats.Conn, error)

	// WSPingInterval is how often idle websockets are pinged, so proxies
	// keep them open and nbclient's 40 s read timeout never fires.
	// Default 25s.
	WSPingInterval time.Duration

	// FrontendID names this instance in session records, events and its
	// bus subject (kb.fe.<id>); characters other than letters, digits, -
	// and _ become _. It must be unique among running front-ends.
	// Default: random.
	FrontendID string

	// MaxKernels limits kernels that are starting or running across the
	// installation (403 beyond). 0 means unlimited. Default 0.
	MaxKernels int

	// MaxKernelsPerUser limits them per owner (the identity that
	// started them, or the user an impersonating identity named), across
	// every front-end of the installation. 0 means unlimited. Default 0.
	MaxKernelsPerUser int

	// Version is reported as gateway_version by GET /api. Default "dev".
	Version string

	// Metrics is the registry the front-end registers its collectors on
	// and /metrics serves; a process running several parts passes one
	// registry to all. Default: a new one with the Go and process
	// collectors.
	Metrics *prometheus.Registry

	// MetricsPublic serves /metrics without authentication (for a
	// Prometheus that cannot send the token). Default false: /metrics
	// needs the same credentials as the API.
	MetricsPublic bool

	// MetricsTopUsers, when above 0, adds kernelbus_user_kernels{user}
	// for that many users with the most kernels. Default 0: no per-user
	// series (user names come from clients; their number is unbounded).
	MetricsTopUsers int

	// Environments configures kernel environments (POST
	// /api/environments). Nil: environments cannot be created here, but
	// the specs of built ones are still served.
	Environments *EnvironmentsConfig

	// ReadyChecks are added to /readyz's own (bus, streams, buckets):
	// serve adds its worker pool's. Default: none.
	ReadyChecks []metrics.Check
}

// EnvironmentsConfig says what environment requests may ask for.
type EnvironmentsConfig struct {
	// Pythons maps the offered Python versions ("3.11") to an interpreter
	// on this host with pip, which validates requirements with pip's
	// resolver. Build workers need the same versions.
	Pythons map[string]string
	// IndexURL is the package index pip resolves against ("": pip's own
	// configuration, PIP_INDEX_URL and pip.conf).
	IndexURL string
	// RMs are the resource managers environments may target. Default:
	// local (every resource manager's workers run them).
	RMs []string
	// Limits bound the resources an environment's kernels may ask for.
	Limits EnvLimits
	// ResolveTimeout bounds pip's resolver. Default 2m.
	ResolveTimeout time.Duration
}

// EnvLimits are the largest resources an environment may ask for; 0 means
// no limit. They apply to every user alike until per-user limits exist.
type EnvLimits struct {
	MemoryMB  int `json:"memory_mb"`
	CPUs      int `json:"cpus"`
	GPUs      int `json:"gpus"`
	Executors int `json:"executors"`
}

// JupyterServerVersion is what GET /api reports as "version": the
// jupyter_server release whose REST API and websocket protocols this
// front-end speaks.
const JupyterServerVersion = "2.14.2"

const (
	defaultLaunchTimeout  = 40 * time.Second
	defaultMaxLaunch      = 10 * time.Minute
	defaultWSReadLimit    = 64 << 20
	defaultPingInterval   = 25 * time.Second
	defaultAuthFailLimit  = 30
	defaultAuthFailWindow = time.Minute
)

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if c.DefaultLaunchTimeout <= 0 {
		c.DefaultLaunchTimeout = defaultLaunchTimeout
	}
	if c.MaxLaunchTimeout <= 0 {
		c.MaxLaunchTimeout = defaultMaxLaunch
	}
	if c.MaxLaunchTimeout < c.DefaultLaunchTimeout {
		return c, fmt.Errorf("frontend: MaxLaunchTimeout %s is below DefaultLaunchTimeout %s", c.MaxLaunchTimeout, c.DefaultLaunchTimeout)
	}
	if c.WSReadLimit <= 0 {
		c.WSReadLimit = defaultWSReadLimit
	}
	if c.WSPingInterval <= 0 {
		c.WSPingInterval = defaultPingInterval
	}
	if c.FrontendID == "" {
		c.FrontendID = strings.ToLower(nuid.Next())
	}
	// It is a subject token and part of KV values: keep it to letters,
	// digits, - and _ (a host name's dots become _).
	c.FrontendID = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, c.FrontendID)
	if c.AuthFailLimit == 0 {
		c.AuthFailLimit = defaultAuthFailLimit
	}
	if c.AuthFailWindow <= 0 {
		c.AuthFailWindow = defaultAuthFailWindow
	}
	if c.MaxKernels < 0 || c.MaxKernelsPerUser < 0 {
		return c, errors.New("frontend: MaxKernels and MaxKernelsPerUser must not be negative")
	}
	b := c.BaseURL
	if b == "" {
		b = "/"
	}
	if !strings.HasPrefix(b, "/") {
		b = "/" + b
	}
	if !strings.HasSuffix(b, "/") {
		b += "/"
	}
	if _, err := url.Parse(b); err != nil {
		return c, fmt.Errorf("frontend: BaseURL %q: %w", c.BaseURL, err)
	}
	c.BaseURL = b
	if c.Version == "" {
		c.Version = "dev"
	}
	if _, err := parseOrigins(c.AllowOrigin); err != nil {
		return c, err
	}
	var err error
	if c.Guard, err = c.Guard.withDefaults(); err != nil {
		return c, err
	}
	return c, nil
}

// originSet matches browser origins against AllowOrigin.
type originSet struct {
	any      bool
	patterns []string // scheme://host[:port], host labels may be "*"
}

func parseOrigins(s string) (originSet, error) {
	var o originSet
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(p), "/"))
		switch {
		case p == "":
		case p == "*":
			o.any = true
		case !strings.Contains(p, "://"):
			return o, fmt.Errorf("frontend: AllowOrigin entry %q needs a scheme, like https://lab.example.com", p)
		default:
			o.patterns = append(o.patterns, strings.ToLower(p))
		}
	}
	return o, nil
}

func (o originSet) enabled() bool { return o.any || len(o.patterns) > 0 }

// match reports whether origin is allowed. A "*" label in a pattern stands
// for one or more DNS labels.
func (o originSet) match(origin string) bool {
	if o.any {
		return true
	}
	origin = strings.ToLower(origin)
	for _, p := range o.patterns {
		if p == origin {
			return true
		}
		if i := strings.Index(p, "*"); i >= 0 {
			pre, post := p[:i], p[i+1:]
			if len(origin) > len(pre)+len(post) && strings.HasPrefix(origin, pre) && strings.HasSuffix(origin, post) {
				mid := origin[len(pre) : len(origin)-len(post)]
				if !strings.ContainsAny(mid, "/:@") {
					return true
				}
			}
		}
	}
	return false
}
