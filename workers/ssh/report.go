package ssh

import "context"

// HostHealth is one pool host in the cluster overview.
type HostHealth struct {
	Host    string `json:"host"`
	Healthy bool   `json:"healthy"`
	// Reason is why the pool keeps the host out of first choices (its
	// last failed start or connection), while it does.
	Reason string `json:"reason,omitempty"`
}

// Report implements workers.Reporter: the configured hosts and the health
// placement sees (from its own starts and connections: it probes nothing).
// Kernels per host are counted by the front-end from the kernel records.
func (b *Backend) Report(context.Context) (any, error) {
	out := make([]HostHealth, 0, len(b.cfg.Hosts))
	for _, a := range b.cfg.Hosts {
		r := b.hosts.unhealthy(a)
		out = append(out, HostHealth{Host: displayHost(a), Healthy: r == "", Reason: r})
	}
	return map[string]any{"hosts": out}, nil
}
