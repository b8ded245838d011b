package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/nats.go/jetstream"
)

// maxClosedSessions is how many disconnected websocket sessions of one
// kernel keep their resume record. A client that comes back resumes where
// it left; beyond this many, the sessions that left longest ago start over
// as new ones. Without a bound, a client that connects in a loop with new
// session ids grows kb_sessions until the kernel ends.
const maxClosedSessions = 32

// outputConsumerIdle is how long the server keeps a websocket's output
// consumer once nobody pulls from it: the backstop for a front-end that
// died before it could delete its consumers (a closing socket deletes its
// own at once).
const outputConsumerIdle = 30 * time.Second

// dropConsumer deletes the output consumer of a closed websocket, so that
// quick connects do not leave one consumer each on KB_IO.
func (s *Server) dropConsumer(cons jetstream.Consumer) {
	if cons == nil {
		return
	}
	info := cons.CachedInfo()
	if info == nil || info.Name == "" {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if err := s.bus.JS.DeleteConsumer(ctx, broker.StreamIO, info.Name); err != nil && !errorsIsNotFound(err) {
		s.log.Debug().Err(err).Str("consumer", info.Name).Msg("could not delete a closed websocket's output consumer; it expires by itself")
	}
}

func errorsIsNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDoesNotExist)
}

// pruneSessions keeps at most maxClosedSessions disconnected session
// records of a kernel, dropping those that left longest ago. Records of
// connected sessions are never touched.
func (s *Server) pruneSessions(kernelID string) {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	lister, err := s.bus.Sessions.ListKeysFiltered(ctx, broker.SessionKey(kernelID, "*"))
	if err != nil {
		return
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	if len(keys) <= maxClosedSessions {
		return
	}
	type closed struct {
		key string
		rev uint64
		at  time.Time
	}
	var gone []closed
	for _, k := range keys {
		e, err := s.bus.Sessions.Get(ctx, k)
		if err != nil {
			continue
		}
		var cs broker.ClientSession
		if json.Unmarshal(e.Value(), &cs) != nil || cs.Connected {
			continue
		}
		gone = append(gone, closed{k, e.Revision(), cs.Updated})
	}
	if len(gone) <= maxClosedSessions {
		return
	}
	slices.SortFunc(gone, func(a, b closed) int { return a.at.Compare(b.at) })
	for _, g := range gone[:len(gone)-maxClosedSessions] {
		// Only the revision read: a session that reconnected meanwhile
		// wrote a newer one and keeps its record.
		_ = s.bus.Sessions.Delete(ctx, g.key, jetstream.LastRevision(g.rev))
	}
}
