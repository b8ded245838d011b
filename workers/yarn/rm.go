package yarn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// RM is a client of the ResourceManager REST API (/ws/v1/cluster). With two
// endpoints (RM high availability) it uses the one that answered last and
// falls over to the other on a network error or a standby's answer.
type RM struct {
	mu        sync.Mutex
	endpoints []string
	cur       int
	// User is sent as user.name on writes (simple auth); default: none.
	User string
	HTTP *http.Client
}

// NewRM takes the primary endpoint and an optional alternate one.
func NewRM(endpoint, alt string) (*RM, error) {
	var eps []string
	for _, e := range []string{endpoint, alt} {
		e = strings.TrimRight(strings.TrimSpace(e), "/")
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		if _, err := url.Parse(e); err != nil {
			return nil, fmt.Errorf("yarn: endpoint %q: %w", e, err)
		}
		eps = append(eps, e)
	}
	if len(eps) == 0 {
		return nil, errors.New("yarn: the ResourceManager endpoint is required (--yarn-endpoint)")
	}
	return &RM{endpoints: eps, HTTP: &http.Client{Timeout: 30 * time.Second}}, nil
}

// App is what kernelbus reads of /ws/v1/cluster/apps/{id}.
type App struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	User            string `json:"user"`
	Queue           string `json:"queue"`
	State           string `json:"state"`
	FinalStatus     string `json:"finalStatus"`
	Diagnostics     string `json:"diagnostics"`
	AMHostHTTP      string `json:"amHostHttpAddress"`
	StartedTime     int64  `json:"startedTime"`
	ApplicationType string `json:"applicationType"`
}

// Ended reports whether YARN is done with the application.
func (a *App) Ended() bool {
	return a.State == "FINISHED" || a.State == "FAILED" || a.State == "KILLED"
}

// Host is the host of the application master, once it has one.
func (a *App) Host() string {
	h := a.AMHostHTTP
	if i := strings.LastIndexByte(h, ':'); i > 0 {
		h = h[:i]
	}
	return h
}

// ErrAppNotFound is returned for an application the RM does not know.
var ErrAppNotFound = errors.New("yarn: application not found")

// do runs one request against the current endpoint, then the other.
func (r *RM) do(ctx context.Context, method, path string, body any, out any) error {
	var payload []byte
	if body != nil {
		payload, _ = json.Marshal(body)
	}
	r.mu.Lock()
	start := r.cur
	r.mu.Unlock()
	var lastErr error
	for i := range r.endpoints {
		idx := (start + i) % len(r.endpoints)
		u := r.endpoints[idx] + path
		if method != http.MethodGet && r.User != "" {
			u += sep(u) + "user.name=" + url.QueryEscape(r.User)
		}
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(payload))
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := r.HTTP.Do(req)
		if err != nil {
			lastErr = err
			continue
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		// A standby RM answers with a redirect or "This is standby RM".
		if resp.StatusCode == http.StatusTemporaryRedirect || bytes.Contains(data, []byte("standby RM")) {
			lastErr = fmt.Errorf("%s is a standby ResourceManager", r.endpoints[idx])
			continue
		}
		r.mu.Lock()
		r.cur = idx
		r.mu.Unlock()
		if resp.StatusCode == http.StatusNotFound {
			return ErrAppNotFound
		}
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("yarn: %s %s: %s: %s", method, path, resp.Status, remoteMessage(data))
		}
		if out != nil {
			if err := json.Unmarshal(data, out); err != nil {
				return fmt.Errorf("yarn: %s %s: %w", method, path, err)
			}
		}
		return nil
	}
	return fmt.Errorf("yarn: no ResourceManager answered (%v): %w", r.endpoints, lastErr)
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

func remoteMessage(data []byte) string {
	var e struct {
		RemoteException struct{ Message string } `json:"RemoteException"`
	}
	if json.Unmarshal(data, &e) == nil && e.RemoteException.Message != "" {
		return e.RemoteException.Message
	}
	s := string(data)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// App returns one application.
func (r *RM) App(ctx context.Context, id string) (*App, error) {
	var out struct{ App App }
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/apps/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	if out.App.ID == "" {
		return nil, fmt.Errorf("yarn: the ResourceManager's answer for %s has no application (is its REST API healthy?)", id)
	}
	return &out.App, nil
}

// AppsByName returns the applications named name, newest first.
func (r *RM) AppsByName(ctx context.Context, name string) ([]App, error) {
	var out struct {
		Apps *struct{ App []App } `json:"apps"`
	}
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/apps?applicationTypes=SPARK&name="+url.QueryEscape(name), nil, &out); err != nil {
		return nil, err
	}
	var apps []App
	if out.Apps != nil {
		for _, a := range out.Apps.App {
			if a.Name == name { // older RMs ignore the name filter
				apps = append(apps, a)
			}
		}
	}
	for i := 1; i < len(apps); i++ {
		for j := i; j > 0 && apps[j].StartedTime > apps[j-1].StartedTime; j-- {
			apps[j], apps[j-1] = apps[j-1], apps[j]
		}
	}
	return apps, nil
}

// TaggedApps returns the applications tagged tag.
func (r *RM) TaggedApps(ctx context.Context, tag string) ([]App, error) {
	var out struct {
		Apps *struct{ App []App } `json:"apps"`
	}
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/apps?applicationTags="+url.QueryEscape(tag), nil, &out); err != nil {
		return nil, err
	}
	if out.Apps == nil {
		return nil, nil
	}
	return out.Apps.App, nil
}

// Kill asks YARN to kill the application.
func (r *RM) Kill(ctx context.Context, id string) error {
	return r.do(ctx, http.MethodPut, "/ws/v1/cluster/apps/"+url.PathEscape(id)+"/state", map[string]string{"state": "KILLED"}, nil)
}

// Metrics is the part of /ws/v1/cluster/metrics the capacity check reads.
type Metrics struct {
	AvailableMB    int64 `json:"availableMB"`
	TotalMB        int64 `json:"totalMB"`
	AvailableCores int64 `json:"availableVirtualCores"`
	ActiveNodes    int64 `json:"activeNodes"`
}

// ClusterMetrics returns the cluster's resources.
func (r *RM) ClusterMetrics(ctx context.Context) (*Metrics, error) {
	var raw map[string]json.RawMessage
	if err := r.do(ctx, http.MethodGet, "/ws/v1/cluster/metrics", nil, &raw); err != nil {
		return nil, err
	}
	var m Metrics
	// The documented answer wraps the fields in clusterMetrics; some
	// builds answer with the bare object.
	if inner, ok := raw["clusterMetrics"]; ok {
		return &m, json.Unmarshal(inner, &m)
	}
	b, _ := json.Marshal(raw)
	return &m, json.Unmarshal(b, &m)
}
