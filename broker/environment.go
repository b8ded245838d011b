package broker

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Kernel environments: a packed Python environment (built by the build
// pool from a validated request) plus the kernelspec that runs it.
const (
	// BucketEnvironments holds one Environment per name: the request, its
	// build state and, once built, the archive's digest.
	BucketEnvironments = "kb_envs"
	// BucketSpecs holds the kernelspecs of built environments, one
	// EnvSpec per name; every front-end serves them in /api/kernelspecs.
	BucketSpecs = "kb_specs"
	// ObjectEnvArchives is the object store of environment archives, each
	// stored under its digest ("sha256-<hex>").
	ObjectEnvArchives = "kb_env_archives"
	// StreamBuilds holds build logs, kb.build.<env>.<build>.
	StreamBuilds = "KB_BUILDS"
	// SubjectBuildsAll captures every build log line.
	SubjectBuildsAll = "kb.build.>"

	// VerbBuild asks the build pool to build an environment; RMBuild is
	// the pool's "resource manager" name, so the request goes to
	// kb.req.build.build and a pool claims it like a start.
	VerbBuild = "build"
	RMBuild   = "build"

	// TypeBuildRequest is the HeaderType of a build request.
	TypeBuildRequest = "build-request/1"
	// TypeBuildLog is the HeaderType of a build log message.
	TypeBuildLog = "build-log/1"

	// TypeEnvRequest is the HeaderType of a launcher's request for a part
	// of its kernel's environment archive, on its renewal subject
	// (kb.creds.<id>); the body is EnvChunkRequest, the reply the bytes
	// with HeaderEnvSize (or HeaderEnvError).
	TypeEnvRequest = "env-request/1"
	HeaderEnvSize  = "Kb-Env-Size"
	HeaderEnvError = "Kb-Env-Error"

	// EnvPrefixVar is the argv/env placeholder a worker replaces with the
	// folder where it unpacked the environment: {env_prefix}.
	EnvPrefixVar = "env_prefix"
)

// SubjectBuildLog is where build build of environment env logs.
func SubjectBuildLog(env, build string) string { return "kb.build." + env + "." + build }

// Environment states.
const (
	EnvQueued   = "queued"
	EnvBuilding = "building"
	EnvReady    = "ready"
	EnvFailed   = "failed"
)

// EnvResources are what a kernel of the environment asks its resource
// manager for. Zero means the resource manager's default.
type EnvResources struct {
	MemoryMB  int `json:"memory_mb,omitempty"`
	CPUs      int `json:"cpus,omitempty"`
	GPUs      int `json:"gpus,omitempty"`
	Executors int `json:"executors,omitempty"`
}

// Environment is a kernel environment: what was asked for, by whom, and
// where its build stands.
type Environment struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name"`
	Python      string       `json:"python"`
	Pip         []string     `json:"pip,omitempty"`
	Conda       []string     `json:"conda,omitempty"`
	RM          string       `json:"rm"`
	Resources   EnvResources `json:"resources"`
	Owner       string       `json:"owner"`
	// Public makes the spec usable by every user; otherwise only the
	// owner (and administrators) may start it.
	Public bool `json:"public,omitempty"`

	State string `json:"state"`
	// Build names the current build (its log subject's last token).
	Build    string `json:"build"`
	Progress int    `json:"progress"` // percent
	Message  string `json:"message,omitempty"`
	// Resolved is what pip's resolver chose at validation: name==version.
	Resolved []string  `json:"resolved,omitempty"`
	Digest   string    `json:"digest,omitempty"`
	Size     int64     `json:"size,omitempty"`
	Worker   string    `json:"worker,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// BuildRequest is the body of a build request: the record says the rest.
type BuildRequest struct {
	Env   string `json:"env"`
	Build string `json:"build"`
}

// BuildLog is one message of a build's log.
type BuildLog struct {
	Time     time.Time `json:"time"`
	Line     string    `json:"line,omitempty"`
	Progress int       `json:"progress"`
	State    string    `json:"state,omitempty"`
}

// EnvChunkRequest asks for the bytes of the kernel's environment archive
// from Offset on.
type EnvChunkRequest struct {
	Offset int64 `json:"offset"`
}

// EnvRef names the archive a kernel's environment is unpacked from.
type EnvRef struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

var envNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// ValidEnvName reports whether name can name an environment: it becomes a
// kernelspec name, a KV key and a subject token, so only lower-case
// letters, digits, - and _, starting with a letter.
func ValidEnvName(name string) bool { return envNameRE.MatchString(name) }

var digestRE = regexp.MustCompile(`^sha256-[0-9a-f]{64}$`)

// ValidDigest reports whether d is an archive digest, sha256-<hex>.
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// A requirement is a project name, optional extras and optional version
// clauses, nothing else: no options (-r, --index-url, -e), no URLs or
// paths, no environment markers. pip reads whatever a requirement file
// says, and a line like "-r /etc/shadow" or "x @ file:///..." would make
// the front-end or a build worker read or run what the user chose.
var (
	reqNameRE    = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?`)
	reqClauseRE  = regexp.MustCompile(`^(?:===|==|!=|~=|>=|<=|<|>)[A-Za-z0-9.*+!_-]+$`)
	condaSpecRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(?:[=<>!]=?[A-Za-z0-9.*_+-]+)*$`)
	pythonVerRE  = regexp.MustCompile(`^3\.[0-9]{1,2}$`)
	maxReqLength = 200
)

// ValidRequirement checks one pip requirement; the error says what to fix.
func ValidRequirement(r string) error {
	r = strings.TrimSpace(r)
	if r == "" || len(r) > maxReqLength {
		return fmt.Errorf("%q: a requirement is a package name with optional extras and versions, up to %d characters", r, maxReqLength)
	}
	if strings.HasPrefix(r, "-") {
		return fmt.Errorf("%q: pip options are not allowed; give package names such as tabulate==0.9.0", r)
	}
	loc := reqNameRE.FindStringIndex(r)
	if loc == nil {
		return fmt.Errorf("%q: not a package name", r)
	}
	rest := strings.ReplaceAll(r[loc[1]:], " ", "")
	if rest == "" {
		return nil
	}
	for _, clause := range strings.Split(rest, ",") {
		if !reqClauseRE.MatchString(clause) {
			return fmt.Errorf("%q: %q is not a version clause (such as ==1.2 or >=1,<2); URLs, paths and markers are not allowed", r, clause)
		}
	}
	return nil
}

// ValidCondaSpec checks one conda package spec (name[=version...]).
func ValidCondaSpec(s string) bool { return len(s) <= maxReqLength && condaSpecRE.MatchString(s) }

// ValidPythonVersion reports whether v looks like 3.X.
func ValidPythonVersion(v string) bool { return pythonVerRE.MatchString(v) }

// EnvSpec is the kernelspec of a built environment, as kb_specs stores
// it: the environment's facts, never an argv. Front-ends turn it into a
// KernelSpec with KernelSpec(); the argv they build runs the unpacked
// environment's own python, so nothing on the bus chooses a program.
type EnvSpec struct {
	Name        string       `json:"name"`
	DisplayName string       `json:"display_name"`
	Python      string       `json:"python"`
	RM          string       `json:"rm"`
	Resources   EnvResources `json:"resources"`
	Digest      string       `json:"digest"`
	Owner       string       `json:"owner"`
	Public      bool         `json:"public,omitempty"`
	Packages    []string     `json:"packages,omitempty"`
}

// KernelSpec turns s into the kernelspec front-ends serve and start.
// Kernels run {env_prefix}/bin/python, which the worker fills in with the
// folder it unpacked the archive to (LaunchConfig.Environment). A private
// environment's spec names its owner in authorized_users, as JEG's do.
func (s *EnvSpec) KernelSpec() *KernelSpec {
	kb := map[string]any{
		"rm": s.RM,
		"environment": map[string]any{
			"name": s.Name, "digest": s.Digest, "python": s.Python,
			"packages": toAnyList(s.Packages),
		},
		"resources": map[string]any{
			"memory_mb": s.Resources.MemoryMB, "cpus": s.Resources.CPUs,
			"gpus": s.Resources.GPUs, "executors": s.Resources.Executors,
		},
	}
	config := map[string]any{}
	if !s.Public && s.Owner != "" {
		config["authorized_users"] = []any{s.Owner}
	}
	if r := s.podResources(); s.RM == RMKubernetes && r != nil {
		config["resources"] = map[string]any{"requests": r, "limits": r}
	}
	if len(config) > 0 {
		kb["config"] = config
	}
	env := map[string]string{"VIRTUAL_ENV": "{" + EnvPrefixVar + "}"}
	if opts := s.sparkOpts(); s.RM == RMYarn && opts != "" {
		env["SPARK_OPTS"] = opts
	}
	return &KernelSpec{
		Name:          s.Name,
		DisplayName:   s.DisplayName,
		Language:      "python",
		InterruptMode: "signal",
		Argv:          []string{"{" + EnvPrefixVar + "}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
		Env:           env,
		Metadata:      map[string]any{"kernelbus": kb, "debugger": true},
	}
}

// podResources are the environment's resources as a Kubernetes pod's
// requests and limits (the kubernetes worker reads config.resources).
func (s *EnvSpec) podResources() map[string]any {
	r := map[string]any{}
	if s.Resources.MemoryMB > 0 {
		r["memory"] = fmt.Sprintf("%dMi", s.Resources.MemoryMB)
	}
	if s.Resources.CPUs > 0 {
		r["cpu"] = fmt.Sprint(s.Resources.CPUs)
	}
	if s.Resources.GPUs > 0 {
		r["nvidia.com/gpu"] = fmt.Sprint(s.Resources.GPUs)
	}
	if len(r) == 0 {
		return nil
	}
	return r
}

// sparkOpts asks YARN for the environment's resources: memory and cores
// of the driver (the kernel), the number of executors. The worker adds
// the site's settings before them and a client's KERNEL_EXTRA_SPARK_OPTS
// after; the front-end's limits read them like any spec's SPARK_OPTS.
func (s *EnvSpec) sparkOpts() string {
	var o []string
	r := s.Resources
	if r.MemoryMB > 0 {
		o = append(o, fmt.Sprintf("--driver-memory %dm", r.MemoryMB))
	}
	if r.CPUs > 0 {
		o = append(o, fmt.Sprintf("--driver-cores %d", r.CPUs))
	}
	if r.Executors > 0 {
		o = append(o, fmt.Sprintf("--num-executors %d", r.Executors))
	}
	if r.GPUs > 0 {
		o = append(o, fmt.Sprintf("--conf spark.driver.resource.gpu.amount=%d", r.GPUs))
	}
	return strings.Join(o, " ")
}

// Environment returns the archive a spec's kernels run in, if any.
func (s *KernelSpec) Environment() *EnvRef {
	kb, _ := s.Metadata["kernelbus"].(map[string]any)
	env, _ := kb["environment"].(map[string]any)
	name, _ := env["name"].(string)
	digest, _ := env["digest"].(string)
	if name == "" || digest == "" {
		return nil
	}
	return &EnvRef{Name: name, Digest: digest}
}

// FillEnvPrefix replaces {env_prefix} in cfg's argv and env with dir.
func (c *LaunchConfig) FillEnvPrefix(dir string) {
	vars := map[string]string{EnvPrefixVar: dir}
	c.Argv = SubstituteArgv(c.Argv, vars)
	env := make(map[string]string, len(c.Env))
	for k, v := range c.Env {
		env[k] = SubstituteArgv([]string{v}, vars)[0]
	}
	c.Env = env
}

func toAnyList(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
