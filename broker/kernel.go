package broker

import (
	"encoding/json"
	"time"
)

// State is where a kernel is in its life. The transitions are:
//
//	requested -> claimed -> submitted -> running <-> restarting
//	any non-terminal -> failed | terminated | dead
//
// failed means it never ran; dead means it ran and died for good (auto
// restart gave up or the resource manager lost it); terminated means it was
// shut down on request.
type State string

const (
	StateRequested  State = "requested"
	StateClaimed    State = "claimed"
	StateSubmitted  State = "submitted"
	StateRunning    State = "running"
	StateRestarting State = "restarting"
	StateFailed     State = "failed"
	StateDead       State = "dead"
	StateTerminated State = "terminated"
)

// ReasonStoppedOutside is the reason a launcher gives a kernel it had to
// stop on a signal kernelbus did not send (kernelbus records a shutdown
// before it signals): its resource manager killed the container, or an
// operator the process. A resource manager's follower that knows more
// replaces it with its own account (workers.Kernels.Lost).
const ReasonStoppedOutside = "its launcher was stopped by a signal from outside kernelbus (the resource manager or an operator ended it)"

// Terminal reports whether no further transition can happen.
func (s State) Terminal() bool {
	return s == StateFailed || s == StateDead || s == StateTerminated
}

// Starting reports whether the kernel has not run yet.
func (s State) Starting() bool {
	return s == StateRequested || s == StateClaimed || s == StateSubmitted
}

// Kernel is the record of one kernel in the kb_kernels bucket, keyed by id.
// Writers update it by compare-and-swap on the KV revision.
type Kernel struct {
	ID   string `json:"id"`
	Spec string `json:"spec"`
	RM   string `json:"rm"`
	User string `json:"user,omitempty"`
	// Owner is the identity the kernel belongs to: who started it, or
	// the user an identity with the impersonate role started it for. It
	// is set by the front-end from the authenticated caller, never from a
	// request body; only the owner and administrators see the kernel.
	Owner    string            `json:"owner,omitempty"`
	State    State             `json:"state"`
	Env      map[string]string `json:"env,omitempty"`
	Created  time.Time         `json:"created"`
	Updated  time.Time         `json:"updated"`
	Deadline time.Time         `json:"deadline"` // launch must finish by then
	// Worker that claimed the start, and the handle its resource manager
	// returned (pid, host, application id, pod): opaque to everyone else.
	Worker string          `json:"worker,omitempty"`
	Host   string          `json:"host,omitempty"`
	Handle json.RawMessage `json:"handle,omitempty"`
	// Attempt names the worker's claim of the start, new at each claim and
	// takeover, and travels in the launch configuration (see
	// LaunchConfig.Attempt): at most one launcher acts for a kernel.
	Attempt string `json:"attempt,omitempty"`
	// Reason says why the kernel failed, died or ended.
	Reason string `json:"reason,omitempty"`
	// FailStatus is the HTTP status a failed start answers with when the
	// resource manager refused the request itself (400: it asks for what
	// the cluster cannot give; 409, 503: not now); 0 means 500.
	FailStatus int `json:"fail_status,omitempty"`
	// Restarts counts automatic restarts since the last stable run.
	Restarts int `json:"restarts,omitempty"`
	// Launch is the launch the front-end resolved, for operators and
	// tests to read. Workers never use it: they build the launch from
	// Spec and Env against their own kernelspecs and env policy
	// (workers.Pool), so whoever writes a record cannot pick the argv.
	Launch *LaunchConfig `json:"launch,omitempty"`
	// Warm is set on a kernel a worker pool started ahead of any request
	// (a warm pool); Claimed stays zero until a start request takes it.
	Warm *Warm `json:"warm,omitempty"`
}

// Warm says where a pre-started kernel came from and when it was taken.
type Warm struct {
	// Pool is the warm pool's key: "<rm>/<spec>".
	Pool string `json:"pool"`
	// Keeper is the worker whose warm keeper started it.
	Keeper string    `json:"keeper"`
	Since  time.Time `json:"since"`
	// Claimed is when a start request took it, zero while it waits.
	Claimed time.Time `json:"claimed,omitzero"`
	// Digest identifies the kernelspec it was started from, so a kernel
	// of a changed spec is reaped rather than handed out.
	Digest string `json:"digest,omitempty"`
	// Accept names client env variables a request may set and still take
	// it (the operator's warm pool setting); the kernel does not have them.
	Accept []string `json:"accept,omitempty"`
	// AnyUser says the kernel runs as the same user whoever takes it (its
	// resource manager does not run kernels as KERNEL_USERNAME), so a
	// request naming a user may take it. Local kernels always may.
	AnyUser bool `json:"any_user,omitempty"`
}

// WarmIdle reports whether k is a warm kernel no request has taken yet:
// it belongs to the pool, to no user, and only the keeper and a claiming
// front-end may touch it.
func (k *Kernel) WarmIdle() bool { return k.Warm != nil && k.Warm.Claimed.IsZero() }

// WarmPoolKey is the key of the warm pool of spec on resource manager rm.
func WarmPoolKey(rm, spec string) string { return rm + "/" + spec }

// NotebookSession is a Jupyter /api/sessions entry, in kb_nbsessions.
type NotebookSession struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	Name     string `json:"name"`
	Type     string `json:"type"`
	KernelID string `json:"kernel_id"`
	// Owner is the identity that created the session (see Kernel.Owner).
	Owner   string    `json:"owner,omitempty"`
	Created time.Time `json:"created"`
}

// Activity is what a kernel is doing, kept in kb_activity and written only
// by its launcher (throttled), because it changes with every request.
type Activity struct {
	ExecutionState string    `json:"execution_state"`
	LastActivity   time.Time `json:"last_activity"`
}

// ClientSession is one websocket session of one kernel, in kb_sessions
// under "<kernel>.<session>".
type ClientSession struct {
	Kernel    string `json:"kernel"`
	Session   string `json:"session"`
	Connected bool   `json:"connected"`
	// Frontend holding the connection while Connected.
	Frontend string `json:"frontend,omitempty"`
	// Cursor is the KB_IO stream sequence of the last message delivered
	// to this session; a reconnect resumes after it.
	Cursor uint64 `json:"cursor"`
	// ReplayFrom, when non-zero, is where a reconnect starts reading
	// instead of Cursor+1: the first chunk of a large message that was
	// still being reassembled when the session left, because chunks of
	// different channels interleave. Messages that complete at or before
	// Cursor were delivered already and are skipped.
	ReplayFrom uint64 `json:"replay_from,omitempty"`
	// InFlight, when above Cursor, is the stream sequence of the last
	// message of a socket write that was under way when the record was
	// written: the messages in (Cursor, InFlight] may have reached the
	// client. A reconnect with resume_after looks for the client's last
	// message among them before it delivers any of them again.
	InFlight uint64 `json:"in_flight,omitempty"`
	// LiveRun, LiveThrough and LiveInFlight describe output written from
	// the live path (core NATS) before its stream copy moved Cursor: the
	// launcher run (its Nats-Msg-Id prefix) and the last per-run number
	// written, and of a write under way. A reconnect treats stream
	// messages of that run numbered up to LiveThrough as written, and
	// those up to LiveInFlight like InFlight.
	LiveRun      string    `json:"live_run,omitempty"`
	LiveThrough  uint64    `json:"live_through,omitempty"`
	LiveInFlight uint64    `json:"live_in_flight,omitempty"`
	Updated      time.Time `json:"updated"`
}

// SessionRelease asks the front-end holding a websocket session
// (ClientSession.Frontend) to close it, on SubjectFrontend, because the
// client reconnected elsewhere. The holder stops delivering, saves the final
// cursor and then replies with a SessionReleased, so the new holder resumes
// exactly after the last message the old connection delivered.
type SessionRelease struct {
	Kernel  string `json:"kernel"`
	Session string `json:"session"`
}

// SessionReleased answers a SessionRelease. Found is false when the
// front-end held no such connection (any more); the record in kb_sessions
// is then authoritative.
type SessionReleased struct {
	Found bool `json:"found"`
}

// SessionKey is the kb_sessions key of a session.
func SessionKey(kernelID, session string) string { return kernelID + "." + session }

// StartRequest asks a worker pool to start a kernel. The kernel record
// holds the details; the request only names it so that a redelivered
// request always acts on the current record.
type StartRequest struct {
	KernelID string `json:"kernel_id"`
	// RequestID ties events to the HTTP request that caused them.
	RequestID string `json:"request_id,omitempty"`
}

// StopRequest asks a worker pool to stop a kernel through its resource
// manager, used when the launcher does not answer.
type StopRequest struct {
	KernelID string `json:"kernel_id"`
	// Host and Handle copy the record's, so the worker can stop the kernel
	// even when the record is gone by the time it gets the request.
	Host      string          `json:"host,omitempty"`
	Handle    json.RawMessage `json:"handle,omitempty"`
	Reason    string          `json:"reason,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
}

// Type names for HeaderType.
const (
	TypeStartRequest = "start-request/1"
	TypeStopRequest  = "stop-request/1"
	TypeControl      = "control/1"
	TypeEvent        = "event/1"
	// TypeSessionRelease marks a SessionRelease on SubjectFrontend.
	TypeSessionRelease = "session-release/1"
)

// Control operations served by a launcher on SubjectControl.
const (
	OpPing      = "ping"
	OpInterrupt = "interrupt"
	OpRestart   = "restart"
	OpShutdown  = "shutdown"
)

// ControlRequest is sent to a launcher.
type ControlRequest struct {
	Op        string `json:"op"`
	RequestID string `json:"request_id,omitempty"`
	User      string `json:"user,omitempty"`
	// Reason says why a shutdown was asked for (e.g. culled); it becomes
	// the kernel's end reason and its terminated event's.
	Reason string `json:"reason,omitempty"`
}

// ControlReply is a launcher's answer.
type ControlReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	State State  `json:"state,omitempty"`
	PID   int    `json:"pid,omitempty"`
}
