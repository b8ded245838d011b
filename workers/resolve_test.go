package workers

import (
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
)

// A warm pool's kernel is launched as warm (a YARN driver then builds its
// SparkContext and runs a first job before it answers); a request's is not.
func TestResolveLaunchCarriesWarm(t *testing.T) {
	specs := SpecList{&broker.KernelSpec{Name: "python3", Argv: []string{"python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"}, Language: "python"}}
	p := &Pool{cfg: PoolConfig{Specs: specs}, be: nameOnly{}}
	now := time.Now()
	k := &broker.Kernel{ID: "00000000-0000-4000-8000-000000000002", Spec: "python3", RM: broker.RMLocal,
		Created: now, Deadline: now.Add(40 * time.Second)}
	cfg, _, err := p.resolveLaunch(k)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Warm {
		t.Fatal("a requested kernel's launch says warm")
	}
	k.Warm = &broker.Warm{Pool: broker.WarmPoolKey(broker.RMLocal, "python3"), Keeper: "w1", Since: now}
	if cfg, _, err = p.resolveLaunch(k); err != nil {
		t.Fatal(err)
	}
	if !cfg.Warm {
		t.Fatal("a warm pool's kernel is launched without LaunchConfig.Warm: its backend cannot prepare it")
	}
}
