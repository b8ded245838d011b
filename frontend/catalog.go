package frontend

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/rs/zerolog"
)

// SpecSource is where the front-end finds kernelspecs.
type SpecSource interface {
	// Specs returns every spec, sorted by name.
	Specs() []*broker.KernelSpec
	// Spec returns the spec of that name (names are lower case).
	Spec(name string) (*broker.KernelSpec, bool)
	// Default names the spec used when a client names none.
	Default() string
}

// Catalog is a SpecSource read from kernelspec directories on this
// machine, like jupyter_client's KernelSpecManager.
type Catalog struct {
	dirs  []string
	log   zerolog.Logger
	probe func() (python, resources string, ok bool) // finds a python3 with ipykernel

	mu    sync.RWMutex
	specs map[string]*broker.KernelSpec
	order []*broker.KernelSpec
}

// DefaultKernelDirs returns where Jupyter looks for kernelspecs, first
// wins: every $JUPYTER_PATH entry's kernels folder, the user's data dir,
// then the system ones.
func DefaultKernelDirs() []string {
	var dirs []string
	for _, p := range filepath.SplitList(os.Getenv("JUPYTER_PATH")) {
		if p != "" {
			dirs = append(dirs, filepath.Join(p, "kernels"))
		}
	}
	if d := os.Getenv("JUPYTER_DATA_DIR"); d != "" {
		dirs = append(dirs, filepath.Join(d, "kernels"))
	} else if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".local", "share", "jupyter", "kernels"))
	}
	return append(dirs, "/usr/local/share/jupyter/kernels", "/usr/share/jupyter/kernels")
}

// NewCatalog reads the kernelspecs below dirs (see DefaultKernelDirs).
// Specs that fail to parse are logged and skipped. When no python3 spec
// exists but the python3 on PATH can import ipykernel, a python3 spec for
// it is offered, because nbclient and papermill ask for "python3" by name.
func NewCatalog(dirs []string, log zerolog.Logger) *Catalog {
	c := &Catalog{dirs: dirs, log: log, probe: probeIPyKernel}
	c.Reload()
	return c
}

// Reload re-reads the directories; call it after installing a spec.
func (c *Catalog) Reload() {
	specs := map[string]*broker.KernelSpec{}
	for _, dir := range c.dirs {
		found, errs := broker.ReadSpecDir(os.DirFS(dir), dir)
		for _, err := range errs {
			c.log.Warn().Err(err).Str("dir", dir).Msg("skipping kernelspec")
		}
		for _, s := range found {
			if _, dup := specs[s.Name]; dup {
				continue // an earlier directory wins, as in jupyter_client
			}
			fixVenvPython(s)
			specs[s.Name] = s
		}
	}
	if _, ok := specs["python3"]; !ok && c.probe != nil {
		if py, res, ok := c.probe(); ok {
			// The spec ipykernel would install, logos included (its
			// resources folder), so JupyterLab shows the usual icon.
			s := &broker.KernelSpec{
				Name:          "python3",
				Dir:           res,
				Argv:          []string{py, "-m", "ipykernel_launcher", "-f", "{connection_file}"},
				DisplayName:   "Python 3 (ipykernel)",
				Language:      "python",
				InterruptMode: "signal",
				Metadata:      map[string]any{"debugger": true},
				Resources:     map[string]string{},
			}
			if res != "" {
				files, _ := os.ReadDir(res)
				for _, f := range files {
					name := f.Name()
					switch {
					case f.IsDir():
					case name == "kernel.js" || name == "kernel.css":
						s.Resources[name] = name
					case strings.HasPrefix(name, "logo-"):
						s.Resources[strings.TrimSuffix(name, filepath.Ext(name))] = name
					}
				}
			}
			specs["python3"] = s
			c.log.Info().Str("python", py).Msg("no python3 kernelspec installed; offering one for this python's ipykernel")
		}
	}
	order := make([]*broker.KernelSpec, 0, len(specs))
	for _, s := range specs {
		order = append(order, s)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].Name < order[j].Name })
	c.mu.Lock()
	c.specs, c.order = specs, order
	c.mu.Unlock()
}

// Specs implements SpecSource.
func (c *Catalog) Specs() []*broker.KernelSpec {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.order
}

// Spec implements SpecSource.
func (c *Catalog) Spec(name string) (*broker.KernelSpec, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, ok := c.specs[strings.ToLower(name)]
	return s, ok
}

// Default implements SpecSource: python3 when present, else the first.
func (c *Catalog) Default() string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, ok := c.specs["python3"]; ok {
		return "python3"
	}
	if len(c.order) > 0 {
		return c.order[0].Name
	}
	return ""
}

// fixVenvPython makes a spec installed in <prefix>/share/jupyter/kernels
// run <prefix>/bin/python when its argv says just "python" or "python3":
// jupyter_client runs such specs with its own sys.executable, so a venv's
// spec means the venv's python, not whichever python is first on PATH.
func fixVenvPython(s *broker.KernelSpec) {
	if len(s.Argv) == 0 || (s.Argv[0] != "python" && s.Argv[0] != "python3") || s.Dir == "" {
		return
	}
	kernels := filepath.Dir(filepath.Clean(s.Dir))
	if filepath.Base(kernels) != "kernels" {
		return
	}
	share := filepath.Dir(filepath.Dir(kernels)) // <prefix>/share
	if filepath.Base(filepath.Dir(kernels)) != "jupyter" || filepath.Base(share) != "share" {
		return
	}
	py := filepath.Join(filepath.Dir(share), "bin", "python")
	if fi, err := os.Stat(py); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		abs, err := filepath.Abs(py)
		if err == nil {
			argv := append([]string{abs}, s.Argv[1:]...)
			s.Argv = argv
		}
	}
}

// probeIPyKernel returns the absolute path of the python3 on PATH when it
// can import ipykernel, and ipykernel's resources folder (its logos).
func probeIPyKernel() (string, string, bool) {
	py, err := exec.LookPath("python3")
	if err != nil {
		return "", "", false
	}
	if abs, err := filepath.Abs(py); err == nil {
		py = abs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "-c",
		"import ipykernel, os; print(os.path.join(os.path.dirname(ipykernel.__file__), 'resources'))").Output()
	if err != nil {
		return "", "", false
	}
	res := strings.TrimSpace(string(out))
	if fi, err := os.Stat(res); err != nil || !fi.IsDir() {
		res = ""
	}
	return py, res, true
}

// StaticSpecs is a fixed SpecSource, for tests and embedding.
type StaticSpecs struct {
	List        []*broker.KernelSpec
	DefaultName string
}

// Specs implements SpecSource.
func (s *StaticSpecs) Specs() []*broker.KernelSpec { return s.List }

// Spec implements SpecSource.
func (s *StaticSpecs) Spec(name string) (*broker.KernelSpec, bool) {
	name = strings.ToLower(name)
	for _, k := range s.List {
		if k.Name == name {
			return k, true
		}
	}
	return nil, false
}

// Default implements SpecSource.
func (s *StaticSpecs) Default() string {
	if s.DefaultName != "" {
		return s.DefaultName
	}
	if len(s.List) > 0 {
		return s.List[0].Name
	}
	return ""
}
