package broker

import (
	"encoding/json"
	"strings"
	"time"
)

// EventSchemaVersion is the version of Event; readers accept older ones.
const EventSchemaVersion = 1

// Event types: every lifecycle step a part witnesses.
const (
	EvRequested        = "requested"
	EvClaimed          = "claimed"
	EvSubmitted        = "submitted"
	EvStarted          = "started"
	EvStartFailed      = "start_failed"
	EvInterrupted      = "interrupted"
	EvRestartRequested = "restart_requested"
	EvRestarted        = "restarted"
	EvDied             = "died"
	EvAutoRestarted    = "auto_restarted"
	EvCulled           = "culled"
	EvShutdownRequest  = "shutdown_requested"
	EvTerminated       = "terminated"
	EvLost             = "lost"
	EvClientConnected  = "client_connected"
	EvClientLeft       = "client_disconnected"
	// EvWarmStarted: a worker's warm keeper asked for a warm kernel;
	// EvWarmClaimed: a start request took one (the event's user is who);
	// EvWarmReaped: the keeper ended one that nobody took.
	EvWarmStarted = "warm_started"
	EvWarmClaimed = "warm_claimed"
	EvWarmReaped  = "warm_reaped"
)

// Event is one durable lifecycle record on kb.evt.<kernel>.<type>.
type Event struct {
	V         int             `json:"v"`
	ID        string          `json:"id"` // unique; the stream deduplicates on it
	Time      time.Time       `json:"time"`
	Type      string          `json:"type"`
	Kernel    string          `json:"kernel"`
	Spec      string          `json:"spec,omitempty"`
	User      string          `json:"user,omitempty"`
	RM        string          `json:"rm,omitempty"`
	Worker    string          `json:"worker,omitempty"`
	Host      string          `json:"host,omitempty"`
	Handle    json.RawMessage `json:"handle,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
	Session   string          `json:"session,omitempty"`
	Source    string          `json:"source,omitempty"` // frontend, worker, launcher
	// Actor is the identity whose request caused the event (the kernel's
	// owner is User); empty for what parts do on their own.
	Actor  string `json:"actor,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// NewEvent fills the common fields from a kernel record.
func NewEvent(typ string, k *Kernel) Event {
	e := Event{V: EventSchemaVersion, Time: time.Now().UTC(), Type: typ}
	if k != nil {
		e.Kernel, e.Spec, e.User, e.RM = k.ID, k.Spec, k.User, k.RM
		e.Worker, e.Host, e.Handle = k.Worker, k.Host, k.Handle
	}
	return e
}

// EventID is the id of an event that more than one part, a retry or a
// redelivered request could emit: "<kernel>:<type>[:<part>...]". The stream
// keeps the first event with an id and drops the others (within its
// duplicate window), so each such fact is stored once. Empty parts are
// left out.
func EventID(kernelID, typ string, parts ...string) string {
	var b strings.Builder
	b.WriteString(kernelID)
	b.WriteByte(':')
	b.WriteString(typ)
	for _, p := range parts {
		if p != "" {
			b.WriteByte(':')
			b.WriteString(p)
		}
	}
	return b.String()
}
