package broker

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LaunchConfig is everything a launcher needs to run one kernel. A worker
// hands it to the launcher in the environment variable EnvLaunchConfig
// (base64 of its JSON), which works the same for a local child, an SSH
// command, a YARN container and a pod.
type LaunchConfig struct {
	V        int    `json:"v"`
	KernelID string `json:"kernel_id"`
	Spec     string `json:"spec"`
	User     string `json:"user,omitempty"`
	// Argv of the kernel, with {connection_file} still to be substituted
	// by the launcher (it writes the file itself).
	Argv []string `json:"argv"`
	// Env of the kernel: the spec's env, the client's filtered env and
	// KERNEL_ID / KERNEL_USERNAME. The launcher adds nothing of its own.
	Env           map[string]string `json:"env"`
	InterruptMode string            `json:"interrupt_mode,omitempty"` // signal | message
	Language      string            `json:"language,omitempty"`
	ResourceDir   string            `json:"resource_dir,omitempty"`
	// LaunchTimeout bounds start to kernel_info_reply.
	LaunchTimeout Duration `json:"launch_timeout"`
	// MaxRestarts bounds consecutive automatic restarts. Default 5.
	MaxRestarts int `json:"max_restarts,omitempty"`
	// IP the kernel binds to. Default 127.0.0.1.
	IP string `json:"ip,omitempty"`
	// PortRange is where the kernel's ports come from, "lower..upper"
	// (JEG's port_range); the worker sets it from its --port-range.
	// Default: the OS's ephemeral ports.
	PortRange string `json:"port_range,omitempty"`
	// WorkDir of the kernel process. Default: the launcher's.
	WorkDir string `json:"work_dir,omitempty"`
	// RMConfig is the spec's resource-manager settings: JEG's
	// metadata.process_proxy.config (remote_hosts, ...) overlaid with
	// metadata.kernelbus.config. Workers read what concerns them.
	RMConfig map[string]any `json:"rm_config,omitempty"`
	// Attempt is the claim this launch belongs to (Kernel.Attempt when the
	// worker started it). A launcher whose attempt is no longer the
	// record's was left behind by a worker that died while starting it,
	// after another worker took the start over: it stands down.
	Attempt string `json:"attempt,omitempty"`
	// Environment is the packed environment the kernel runs in, if its
	// spec came from one: the worker unpacks the archive (cached by
	// digest) and replaces {env_prefix} in Argv and Env with its folder
	// before the launcher sees them.
	Environment *EnvRef `json:"environment,omitempty"`
	// EnvArchive is the path, on the worker's host, of the environment's
	// archive (digest-checked) for resource managers that ship it to the
	// kernel's host themselves (workers.EnvShipper: YARN, SSH). It is
	// the worker's own business and never leaves it.
	EnvArchive string `json:"-"`
	// Warm marks the launch of a warm pool's kernel, which nobody waits
	// for yet: a resource manager may do at start what it would otherwise
	// leave for later (a YARN kernel builds its SparkContext before it
	// answers), so that the kernel is ready when a request takes it.
	Warm bool `json:"warm,omitempty"`

	// How to reach the bus. NATSCreds are a creds file's contents: when
	// the worker has the installation's minter (serve, `nats-auth init`),
	// a user JWT scoped to this kernel and its nkey seed, minted for this
	// launch; without one, the worker's own credentials. NATSToken is the
	// legacy shared token of an installation without credentials. NATSCA is the
	// PEM of the CA that signed the server's TLS certificate, if the bus
	// uses TLS with a private CA.
	NATSURLs  string `json:"nats_urls"`
	NATSToken string `json:"nats_token,omitempty"`
	NATSCreds string `json:"nats_creds,omitempty"`
	NATSCA    string `json:"nats_ca,omitempty"`
}

// EnvLaunchConfig carries the LaunchConfig to the launcher.
const EnvLaunchConfig = "KB_LAUNCH_CONFIG"

// Encode returns the value for EnvLaunchConfig.
func (c *LaunchConfig) Encode() (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// DecodeLaunchConfig reads a value of EnvLaunchConfig.
func DecodeLaunchConfig(s string) (*LaunchConfig, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: not base64: %w", EnvLaunchConfig, err)
	}
	var c LaunchConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvLaunchConfig, err)
	}
	if c.KernelID == "" || len(c.Argv) == 0 || c.NATSURLs == "" {
		return nil, fmt.Errorf("%s: kernel_id, argv and nats_urls are required", EnvLaunchConfig)
	}
	if c.MaxRestarts == 0 {
		c.MaxRestarts = 5
	}
	if c.IP == "" {
		c.IP = "127.0.0.1"
	}
	if c.LaunchTimeout <= 0 {
		c.LaunchTimeout = Duration(40 * time.Second)
	}
	return &c, nil
}

// Duration is a time.Duration that reads and writes as a Go duration
// string ("40s") in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// NewLaunchConfig is what a worker hands the launcher of kernel id, owned
// by user, for spec and the client's filtered env. The kernel's env is the
// spec's (its ${VAR}s filled from the client's env only, never from this
// process's, which may hold secrets), the client's filtered env and the
// KERNEL_* facts JEG kernels rely on. Workers build it themselves from the
// kernelspec they read: argv and env never come from a request or a
// record.
func NewLaunchConfig(spec *KernelSpec, id, user string, env map[string]string, timeout time.Duration) *LaunchConfig {
	kenv := make(map[string]string, len(spec.Env)+len(env)+4)
	for name, v := range spec.Env {
		kenv[name] = expandVars(v, env)
	}
	for name, v := range env {
		kenv[name] = v
	}
	kenv[EnvKernelID] = id
	if user != "" {
		kenv[EnvUsername] = user
	}
	kenv[EnvKernelLanguage] = spec.Language
	kenv[EnvKernelGateway] = "1"
	mode := spec.InterruptMode
	if mode == "" {
		mode = "signal"
	}
	return &LaunchConfig{
		V: 1, KernelID: id, Spec: spec.Name, User: user, Argv: spec.Argv, Env: kenv,
		InterruptMode: mode, Language: spec.Language, ResourceDir: spec.Dir,
		LaunchTimeout: Duration(timeout), RMConfig: spec.RMConfig(), Environment: spec.Environment(),
	}
}

// expandVars replaces ${NAME} and $NAME with vars[NAME] and $$ with $,
// leaving unknown names as written (Python's Template.safe_substitute,
// which jupyter_client uses).
func expandVars(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok && isIdent(name) {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		case isIdentStart(next):
			j := i + 1
			for j < len(s) && (isIdentStart(s[j]) || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			if v, ok := vars[s[i+1:j]]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i:j])
			}
			i = j - 1
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func isIdentStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isIdent(s string) bool {
	if s == "" || !isIdentStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isIdentStart(s[i]) && !(s[i] >= '0' && s[i] <= '9') {
			return false
		}
	}
	return true
}

// PortRange is the range kernels' ports are taken from, both ends
// included, as JEG's port_range "lower..upper". The zero value means the
// OS's ephemeral ports.
type PortRange struct{ Lo, Hi int }

// ParsePortRange reads "lower..upper" (or "" or "0..0": no range). A range
// needs room for at least five ports and must lie within 1024..65535.
func ParsePortRange(s string) (PortRange, error) {
	if s == "" || s == "0..0" {
		return PortRange{}, nil
	}
	lo, hi, ok := strings.Cut(s, "..")
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil {
		return PortRange{}, fmt.Errorf("port range %q: want lower..upper, e.g. 40000..41000", s)
	}
	if a < 1024 || b > 65535 || b-a < 4 {
		return PortRange{}, fmt.Errorf("port range %q: want 1024 <= lower, upper <= 65535 and room for 5 ports", s)
	}
	return PortRange{Lo: a, Hi: b}, nil
}

// IsZero reports whether r is no range (the OS picks).
func (r PortRange) IsZero() bool { return r.Lo == 0 && r.Hi == 0 }
