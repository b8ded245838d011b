package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/nats-io/nats.go/jetstream"
)

// SessionModel is an /api/sessions entry as jupyter_server shows it.
type SessionModel struct {
	ID       string       `json:"id"`
	Path     string       `json:"path"`
	Name     string       `json:"name"`
	Type     string       `json:"type"`
	Kernel   *KernelModel `json:"kernel"`
	Notebook *notebookRef `json:"notebook,omitempty"`
}

type notebookRef struct {
	Path string `json:"path"`
	Name string `json:"name"`
}

// sessionBody is what POST and PATCH accept. "notebook" is the
// pre-5.0 notebook server's form of path and name.
type sessionBody struct {
	Path     *string `json:"path"`
	Name     *string `json:"name"`
	Type     *string `json:"type"`
	Notebook *struct {
		Path string `json:"path"`
		Name string `json:"name"`
	} `json:"notebook"`
	Kernel *struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"kernel"`
}

func parseSessionBody(c *fiber.Ctx) (sessionBody, error) {
	var b sessionBody
	if len(strings.TrimSpace(string(c.Body()))) == 0 {
		return b, nil
	}
	if err := json.Unmarshal(c.Body(), &b); err != nil {
		return b, broker.Errorf(broker.ErrBadRequest, "request body is not valid JSON: %v", err)
	}
	if b.Path == nil && b.Notebook != nil {
		b.Path = &b.Notebook.Path
		if b.Name == nil && b.Notebook.Name != "" {
			b.Name = &b.Notebook.Name
		}
	}
	return b, nil
}

func (s *Server) sessionModel(ns *broker.NotebookSession, k *broker.Kernel) SessionModel {
	km := s.model(k)
	m := SessionModel{ID: ns.ID, Path: ns.Path, Name: ns.Name, Type: ns.Type, Kernel: &km}
	if ns.Type == "notebook" {
		m.Notebook = &notebookRef{Path: ns.Path, Name: ns.Name}
	}
	return m
}

func sessionNotFound(id string) error {
	return broker.Errorf(broker.ErrSessionNotFound, "Session not found: %s", id)
}

func (s *Server) readSession(ctx context.Context, id string) (*broker.NotebookSession, uint64, error) {
	e, err := s.bus.NotebookSessions.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, sessionNotFound(id)
	}
	if err != nil {
		return nil, 0, err
	}
	var ns broker.NotebookSession
	if err := json.Unmarshal(e.Value(), &ns); err != nil {
		return nil, 0, broker.Wrap(broker.ErrInternal, err, "session %s is unreadable", id)
	}
	return &ns, e.Revision(), nil
}

func (s *Server) writeSession(ctx context.Context, ns *broker.NotebookSession) error {
	data, _ := json.Marshal(ns)
	if _, err := s.bus.NotebookSessions.Put(ctx, ns.ID, data); err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "could not save session %s", ns.ID)
	}
	return nil
}

// allSessions returns who's sessions whose kernel still exists, dropping
// sessions whose kernel is gone as jupyter_server does.
func (s *Server) allSessions(ctx context.Context, who *auth.Identity) ([]SessionModel, error) {
	kl, err := s.bus.NotebookSessions.ListKeys(ctx)
	if err != nil {
		return nil, broker.Wrap(broker.ErrUnavailable, err, "could not list sessions")
	}
	var out []SessionModel
	for id := range kl.Keys() {
		ns, _, err := s.readSession(ctx, id)
		if err != nil || !may(who, ns.Owner) {
			continue
		}
		k, _, err := s.visibleKernel(ctx, ns.KernelID)
		if err != nil {
			if errors.Is(err, broker.ErrKernelNotFound) {
				_ = s.bus.NotebookSessions.Delete(ctx, id)
			}
			continue
		}
		out = append(out, s.sessionModel(ns, k))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *Server) listSessions(c *fiber.Ctx) error {
	out, err := s.allSessions(s.ctx, identityOf(c))
	if err != nil {
		return err
	}
	if out == nil {
		out = []SessionModel{}
	}
	return c.JSON(out)
}

// ownedSession reads a session of who's; another user's answers 404.
func (s *Server) ownedSession(who *auth.Identity, id string) (*broker.NotebookSession, error) {
	ns, _, err := s.readSession(s.ctx, id)
	if err != nil {
		return nil, err
	}
	if !may(who, ns.Owner) {
		return nil, sessionNotFound(id)
	}
	return ns, nil
}

func (s *Server) getSession(c *fiber.Ctx) error {
	who := identityOf(c)
	ns, err := s.ownedSession(who, c.Params("id"))
	if err != nil {
		return err
	}
	k, _, err := s.ownedKernel(s.ctx, who, ns.KernelID)
	if err != nil {
		return sessionNotFound(ns.ID)
	}
	return c.JSON(s.sessionModel(ns, k))
}

// postSession creates a session for a path, starting a kernel (with no
// client env, like JEG) or attaching an existing one. A path that already
// has a session gets that session back, as in jupyter_server.
func (s *Server) postSession(c *fiber.Ctx) error {
	who := identityOf(c)
	b, err := parseSessionBody(c)
	if err != nil {
		return err
	}
	if b.Path == nil {
		return broker.Errorf(broker.ErrBadRequest, "Missing field in JSON data: path")
	}
	// Paths are per user: another user's notebook of the same name is
	// theirs.
	all, err := s.allSessions(s.ctx, who)
	if err != nil {
		return err
	}
	for _, m := range all {
		if m.Path == *b.Path {
			c.Location(s.cfg.BaseURL + "api/sessions/" + m.ID)
			return c.Status(fiber.StatusCreated).JSON(m)
		}
	}
	ns := &broker.NotebookSession{ID: uuid.NewString(), Path: *b.Path, Type: "notebook", Owner: who.Name, Created: time.Now().UTC()}
	if b.Name != nil {
		ns.Name = *b.Name
	}
	if b.Type != nil && *b.Type != "" {
		ns.Type = *b.Type
	}
	k, err := s.sessionKernel(who, b, "", requestID(c))
	if err != nil {
		return err
	}
	ns.KernelID = k.ID
	if err := s.writeSession(s.ctx, ns); err != nil {
		return err
	}
	c.Location(s.cfg.BaseURL + "api/sessions/" + ns.ID)
	return c.Status(fiber.StatusCreated).JSON(s.sessionModel(ns, k))
}

// sessionKernel returns the kernel a session body asks for: an existing
// one by id, or a new one by name (the default spec when it names none).
// current is the session's kernel, kept when the body names none.
func (s *Server) sessionKernel(who *auth.Identity, b sessionBody, current, reqID string) (*broker.Kernel, error) {
	switch {
	case b.Kernel != nil && b.Kernel.ID != "":
		k, _, err := s.ownedKernel(s.ctx, who, b.Kernel.ID)
		if err != nil {
			return nil, broker.Errorf(broker.ErrBadRequest, "No such kernel: %s", b.Kernel.ID)
		}
		return k, nil
	case current != "" && (b.Kernel == nil || b.Kernel.Name == ""):
		k, _, err := s.ownedKernel(s.ctx, who, current)
		return k, err
	default:
		name := ""
		if b.Kernel != nil {
			name = b.Kernel.Name
		}
		return s.startKernel(who, name, nil, reqID)
	}
}

func (s *Server) patchSession(c *fiber.Ctx) error {
	who := identityOf(c)
	ns, err := s.ownedSession(who, c.Params("id"))
	if err != nil {
		return err
	}
	b, err := parseSessionBody(c)
	if err != nil {
		return err
	}
	if b.Path != nil {
		ns.Path = *b.Path
	}
	if b.Name != nil {
		ns.Name = *b.Name
	}
	if b.Type != nil && *b.Type != "" {
		ns.Type = *b.Type
	}
	old := ns.KernelID
	var k *broker.Kernel
	if b.Kernel != nil {
		if k, err = s.sessionKernel(who, b, "", requestID(c)); err != nil {
			return err
		}
		ns.KernelID = k.ID
	} else if k, _, err = s.ownedKernel(s.ctx, who, ns.KernelID); err != nil {
		return sessionNotFound(ns.ID)
	}
	if err := s.writeSession(s.ctx, ns); err != nil {
		return err
	}
	// A kernel the session no longer uses, and no other session does,
	// is shut down, as jupyter_server does.
	if old != ns.KernelID && !s.kernelInUse(old) {
		if err := s.shutdownKernel(who, old, requestID(c)); err != nil && !errors.Is(err, broker.ErrKernelNotFound) {
			s.log.Warn().Err(err).Str("kernel_id", old).Msg("could not shut down the session's previous kernel")
		}
	}
	return c.JSON(s.sessionModel(ns, k))
}

// kernelInUse reports whether any session (anyone's) uses kernel id.
func (s *Server) kernelInUse(id string) bool {
	all, err := s.allSessions(s.ctx, anonymous)
	if err != nil {
		return true // when unsure, keep the kernel
	}
	for _, m := range all {
		if m.Kernel != nil && m.Kernel.ID == id {
			return true
		}
	}
	return false
}

func (s *Server) deleteSession(c *fiber.Ctx) error {
	who := identityOf(c)
	ns, err := s.ownedSession(who, c.Params("id"))
	if err != nil {
		return err
	}
	if err := s.bus.NotebookSessions.Delete(s.ctx, ns.ID); err != nil {
		return broker.Wrap(broker.ErrUnavailable, err, "could not delete session %s", ns.ID)
	}
	if err := s.shutdownKernel(who, ns.KernelID, requestID(c)); err != nil && !errors.Is(err, broker.ErrKernelNotFound) {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}
