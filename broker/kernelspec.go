package broker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
)

// KernelSpec is a kernel.json plus where it came from. It is compatible with
// Jupyter's and with JEG's (metadata.process_proxy).
type KernelSpec struct {
	Name string `json:"-"`
	// Dir is the spec's resource directory on the machine that read it.
	Dir string `json:"-"`

	Argv                  []string          `json:"argv"`
	DisplayName           string            `json:"display_name"`
	Language              string            `json:"language"`
	InterruptMode         string            `json:"interrupt_mode,omitempty"`
	Env                   map[string]string `json:"env,omitempty"`
	Metadata              map[string]any    `json:"metadata,omitempty"`
	KernelProtocolVersion string            `json:"kernel_protocol_version,omitempty"`

	// Resources maps REST resource keys (logo-64x64, kernel.js) to file
	// names inside Dir.
	Resources map[string]string `json:"-"`
}

// Resource managers.
const (
	RMLocal      = "local"
	RMSSH        = "ssh"
	RMYarn       = "yarn"
	RMKubernetes = "kubernetes"
)

// jegClasses maps JEG process-proxy classes (by their last dotted part) to
// resource managers, so JEG kernelspecs work unchanged.
var jegClasses = map[string]string{
	"LocalProcessProxy":         RMLocal,
	"DistributedProcessProxy":   RMSSH,
	"YarnClusterProcessProxy":   RMYarn,
	"KubernetesProcessProxy":    RMKubernetes,
	"SparkOperatorProcessProxy": RMKubernetes,
}

// RM returns the resource manager the spec asks for: metadata.kernelbus.rm,
// else JEG's metadata.process_proxy.class_name, else local.
func (s *KernelSpec) RM() (string, error) {
	if kb, ok := s.Metadata["kernelbus"].(map[string]any); ok {
		if rm, ok := kb["rm"].(string); ok && rm != "" {
			return rm, nil
		}
	}
	if pp, ok := s.Metadata["process_proxy"].(map[string]any); ok {
		if cn, ok := pp["class_name"].(string); ok && cn != "" {
			short := cn[strings.LastIndex(cn, ".")+1:]
			if rm, ok := jegClasses[short]; ok {
				return rm, nil
			}
			return "", fmt.Errorf("kernelspec %s: process proxy %q is not supported (use one of Local, Distributed, YarnCluster, Kubernetes)", s.Name, cn)
		}
	}
	return RMLocal, nil
}

// RMConfig returns the spec's resource-manager settings: JEG's
// metadata.process_proxy.config, overlaid with metadata.kernelbus.config.
// Nil when the spec has neither.
func (s *KernelSpec) RMConfig() map[string]any {
	var out map[string]any
	for _, src := range []string{"process_proxy", "kernelbus"} {
		m, _ := s.Metadata[src].(map[string]any)
		cfg, _ := m["config"].(map[string]any)
		for k, v := range cfg {
			if out == nil {
				out = map[string]any{}
			}
			out[k] = v
		}
	}
	return out
}

// InterruptByMessage reports whether interrupts go as interrupt_request.
func (s *KernelSpec) InterruptByMessage() bool { return s.InterruptMode == "message" }

var specName = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// ValidSpecName reports whether name can be a kernelspec name.
func ValidSpecName(name string) bool { return specName.MatchString(name) }

// ParseKernelSpec parses one kernel.json.
func ParseKernelSpec(name string, data []byte) (*KernelSpec, error) {
	var s KernelSpec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("kernelspec %s: kernel.json: %w", name, err)
	}
	if len(s.Argv) == 0 {
		return nil, fmt.Errorf("kernelspec %s: argv is empty", name)
	}
	if s.DisplayName == "" {
		s.DisplayName = name
	}
	switch s.InterruptMode {
	case "", "signal", "message":
	default:
		return nil, fmt.Errorf("kernelspec %s: interrupt_mode %q is neither signal nor message", name, s.InterruptMode)
	}
	s.Name = name
	if _, err := s.RM(); err != nil {
		return nil, err
	}
	return &s, nil
}

// resourceKey is the REST key of a resource file, or "" if it is not one:
// logo-* files are keyed without their extension; kernel.js and kernel.css
// keep their names.
func resourceKey(file string) string {
	switch {
	case file == "kernel.js" || file == "kernel.css":
		return file
	case strings.HasPrefix(file, "logo-"):
		return strings.TrimSuffix(file, path.Ext(file))
	}
	return ""
}

// ReadSpecDir reads every <name>/kernel.json below root. Specs that fail to
// parse are returned as errors next to the good ones; dir is the path root
// stands for, kept in KernelSpec.Dir.
func ReadSpecDir(root fs.FS, dir string) ([]*KernelSpec, []error) {
	entries, err := fs.ReadDir(root, ".")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, []error{err}
	}
	var specs []*KernelSpec
	var errs []error
	for _, e := range entries {
		if !e.IsDir() && e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		name := e.Name()
		if !ValidSpecName(name) {
			continue
		}
		data, err := fs.ReadFile(root, name+"/kernel.json")
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		s, err := ParseKernelSpec(strings.ToLower(name), data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.Dir = path.Join(dir, name)
		s.Resources = map[string]string{}
		files, _ := fs.ReadDir(root, name)
		for _, f := range files {
			if k := resourceKey(f.Name()); k != "" && !f.IsDir() {
				s.Resources[k] = f.Name()
			}
		}
		specs = append(specs, s)
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	return specs, errs
}

// SubstituteArgv replaces {connection_file}, {resource_dir}, {kernel_id}
// and {prefix}-style placeholders present in vars; unknown ones stay.
func SubstituteArgv(argv []string, vars map[string]string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		for k, v := range vars {
			a = strings.ReplaceAll(a, "{"+k+"}", v)
		}
		out[i] = a
	}
	return out
}

// Digest identifies what a kernel of the spec is started from (argv, env,
// interrupt mode, language, metadata): two specs with the same digest
// start the same kernel. Warm kernels carry it, so a kernel started from
// an older version of a spec is never handed out.
func (s *KernelSpec) Digest() string {
	b, _ := json.Marshal(struct {
		Argv     []string          `json:"argv"`
		Env      map[string]string `json:"env"`
		Mode     string            `json:"interrupt_mode"`
		Language string            `json:"language"`
		Metadata map[string]any    `json:"metadata"`
	}{s.Argv, s.Env, s.InterruptMode, s.Language, s.Metadata})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}
