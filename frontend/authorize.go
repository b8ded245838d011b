package frontend

import (
	"slices"
	"strings"

	"github.com/kernelbus/kernelbus/broker"
)

// authorize applies JEG's authorization stanzas to a start by user (the
// kernel's KERNEL_USERNAME, which the front-end has already tied to the
// caller's identity): a spec's process_proxy.config.unauthorized_users add
// to the global UnauthorizedUsers and always win; its authorized_users,
// when given, replace the global AuthorizedUsers; a non-empty authorized
// list admits only its members.
func (s *Server) authorize(spec *broker.KernelSpec, user string) error {
	cfg := spec.RMConfig()
	denied := slices.Contains(s.cfg.UnauthorizedUsers, user) || slices.Contains(userList(cfg["unauthorized_users"]), user)
	allowed := s.cfg.AuthorizedUsers
	if l := userList(cfg["authorized_users"]); len(l) > 0 {
		allowed = l
	}
	if denied || len(allowed) > 0 && !slices.Contains(allowed, user) {
		name := spec.DisplayName
		if name == "" {
			name = spec.Name
		}
		// JEG's wording, which its clients and tests look for.
		return broker.Errorf(broker.ErrForbidden, "User '%s' is not authorized to start kernel '%s'. Ensure KERNEL_USERNAME is set to an appropriate value and retry the request.", user, name)
	}
	return nil
}

// userList reads a user list of a kernelspec: a JSON list of names, or
// one comma-separated string.
func userList(v any) []string {
	var out []string
	switch l := v.(type) {
	case []any:
		for _, x := range l {
			if s, ok := x.(string); ok && strings.TrimSpace(s) != "" {
				out = append(out, strings.TrimSpace(s))
			}
		}
	case []string:
		out = append(out, l...)
	case string:
		for _, s := range strings.Split(l, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}
