// Package workers holds the claim loop shared by every worker pool and the
// interface each resource manager implements. A pool claims start requests
// of its resource manager from the bus, submits the launcher through the
// Backend, records the handle in the kernel record and follows the launch
// until the launcher reports the kernel running or the launch fails.
package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// Handle is what a backend returns for a submitted launcher. It is saved in
// the kernel record, so any worker of the pool (including a restarted one)
// can poll, signal and stop the kernel from the record alone.
type Handle struct {
	// Host the launcher runs on, for humans and events.
	Host string
	// Data is the backend's own versioned, opaque description (pid, YARN
	// application id, pod name...).
	Data json.RawMessage
	// Env is the environment the launch runs in, set by the pool and kept
	// with the trusted handle: the only archive the kernel's launcher may
	// fetch from the workers (envserve.go).
	Env *broker.EnvRef
}

// Status is what Poll learns about a submitted launcher.
type Status struct {
	// Running is true while the launcher process/application is alive.
	Running bool
	// Exited is true once it is known to have ended.
	Exited bool
	// Reason says how it ended (exit code, signal, resource manager
	// diagnostics, last lines of stderr).
	Reason string
}

// Backend is one resource manager: what the pool calls. Implementations
// live in one package each (workers/local, workers/ssh, ...) and register
// in a Registry; what only some resource managers can do is an optional
// interface below (Signaler, Follower, io.Closer).
type Backend interface {
	// Name is the resource manager's name (broker.RMLocal, ...).
	Name() string
	// Start submits a launcher that will run cfg. It returns once the
	// resource manager has accepted it, not when the kernel is ready.
	Start(ctx context.Context, cfg *broker.LaunchConfig) (Handle, error)
	// Poll reports on a launcher from its saved handle.
	Poll(ctx context.Context, h Handle) (Status, error)
	// Stop ends the launcher and its kernel, politely for grace, then by
	// force. Stopping something already gone is not an error.
	Stop(ctx context.Context, h Handle, grace time.Duration) error
}

// Reporter is an optional extra of a Backend that can describe its
// resource manager's capacity and use (YARN's cluster metrics and
// queues). The pool puts the report into its presence record as
// "cluster", where the front-ends' overview reads it: front-ends talk to
// the bus only, never to a resource manager.
type Reporter interface {
	Report(ctx context.Context) (any, error)
}

// Signaler is an optional extra of a Backend that can signal a launcher's
// process group without the launcher's help (a process on this host or
// over SSH). Kernels are interrupted through their launcher on the bus
// either way; this is for operators' tools and tests.
type Signaler interface {
	Signal(ctx context.Context, h Handle, sig syscall.Signal) error
}

// UserBound is an optional extra of a Backend whose kernels run as the
// requesting user (KERNEL_USERNAME): a YARN application submitted with
// --proxy-user. A warm kernel, started before anyone asked, runs as the
// worker's user, so such a backend's warm kernels serve no request that
// names a user. Backends without it run every kernel as the same user.
type UserBound interface {
	RunsAsUser() bool
}

// A backend that holds resources of its own (connections) implements
// io.Closer; the worker closes it after its pool stopped.

// Follower is an optional extra of a Backend whose resource manager can
// tell, better than the launcher can, that a kernel is lost: a pod that is
// deleted, evicted or cannot be scheduled. The pool runs Follow while it
// claims requests; Follow reports through k and returns when ctx ends.
type Follower interface {
	Follow(ctx context.Context, k Kernels) error
}

// Kernels is what the pool offers a Follower.
type Kernels interface {
	// Lost ends a kernel the resource manager lost: a starting kernel
	// fails with reason, a running one is dead with reason. Kernels that
	// already ended are left as they are.
	Lost(ctx context.Context, kernelID, reason string) error
	// Ended reports whether the kernel's record is gone or terminal, so
	// that whatever the resource manager still holds for it can go.
	Ended(ctx context.Context, kernelID string) (bool, error)
}

// Factory builds a backend from the worker's configuration.
type Factory func(cfg BackendConfig) (Backend, error)

// BackendConfig is what every backend may need from the worker.
type BackendConfig struct {
	// LauncherPath is the kernelbus-launcher binary on this machine.
	LauncherPath string
	// WorkerID names the worker in logs and handles.
	WorkerID string
	// Options are backend-specific settings (hosts, endpoints...).
	Options map[string]string
}

// Registry maps resource-manager names to factories. It is explicit: mains
// register the backends they link.
type Registry struct {
	mu sync.Mutex
	m  map[string]Factory
}

// Register adds a backend factory; registering a name twice panics, as it
// is a programming error.
func (r *Registry) Register(name string, f Factory) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]Factory{}
	}
	if _, dup := r.m[name]; dup {
		panic("workers: backend registered twice: " + name)
	}
	r.m[name] = f
}

// New builds the backend called name.
func (r *Registry) New(name string, cfg BackendConfig) (Backend, error) {
	r.mu.Lock()
	f, ok := r.m[name]
	r.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("unknown resource manager %q (known: %v)", name, r.Names())
	}
	return f(cfg)
}

// Names lists the registered backends.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
