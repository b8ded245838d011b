package workers

import (
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// nameOnly is a Backend of which resolveLaunch uses only the name.
type nameOnly struct{ Backend }

func (nameOnly) Name() string { return broker.RMLocal }

// BenchmarkResolveLaunch is what checking a start costs the worker now
// that it builds the launch itself (spec lookup, env filtered again):
// microseconds against a kernel start of a second or more.
func BenchmarkResolveLaunch(b *testing.B) {
	specs := SpecList{}
	for _, n := range []string{"a", "b", "python3", "r", "z"} {
		specs = append(specs, &broker.KernelSpec{Name: n, Argv: []string{"python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"},
			Language: "python", Env: map[string]string{"FROM_SPEC": "x${KERNEL_SUFFIX}y"}})
	}
	p := &Pool{cfg: PoolConfig{Specs: specs, Env: broker.EnvPolicy{Allowed: []string{"SPARK_OPTS"}}}, be: nameOnly{}}
	now := time.Now()
	k := &broker.Kernel{ID: "00000000-0000-4000-8000-000000000001", Spec: "python3", RM: broker.RMLocal, User: "alice",
		Created: now, Deadline: now.Add(40 * time.Second),
		Env: map[string]string{"KERNEL_USERNAME": "alice", "KERNEL_SUFFIX": "s", "SPARK_OPTS": "--conf a=b", "JPY_SESSION_NAME": "x.ipynb"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := p.resolveLaunch(k); err != nil {
			b.Fatal(err)
		}
	}
}
