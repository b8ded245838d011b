package frontend

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	kbjs "github.com/kernelbus/kernelbus/jetstream"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
)

// TestEnvironmentsAPI checks the environment endpoints' answers against
// openapi.yaml (doHTTP does) and that front-ends serve exactly the
// well-formed specs of kb_specs. The builds themselves are tested with a
// real build worker in workers/envs.
func TestEnvironmentsAPI(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	e := newEnv(t, Config{Environments: &EnvironmentsConfig{
		Pythons: map[string]string{"3.11": py}, Limits: EnvLimits{MemoryMB: 2048},
	}})
	var opts map[string]any
	if r, b := e.do("GET", "api/environments/options", nil, nil, &opts); r.StatusCode != 200 || opts["enabled"] != true {
		t.Fatalf("options: %d %s", r.StatusCode, b)
	}
	if r, b := e.do("POST", "api/environments", map[string]any{"name": "x", "python": "3.11", "resources": map[string]any{"memory_mb": 4096}}, nil, nil); r.StatusCode != 400 || !strings.Contains(string(b), "limit of 2048") {
		t.Fatalf("over the limit: %d %s", r.StatusCode, b)
	}
	if r, b := e.do("POST", "api/environments", "{not json", nil, nil); r.StatusCode != 400 {
		t.Fatalf("bad JSON: %d %s", r.StatusCode, b)
	}
	if r, b := e.do("POST", "api/environments", map[string]any{"name": "python3", "python": "3.11"}, nil, nil); r.StatusCode != 409 {
		t.Fatalf("a name an installed spec has: %d %s", r.StatusCode, b)
	}
	var env map[string]any
	r, b := e.do("POST", "api/environments", map[string]any{"name": "sixes", "python": "3.11", "pip": []string{"six"}}, nil, &env)
	if r.StatusCode != 202 {
		t.Fatalf("create: %d %s", r.StatusCode, b)
	}
	if r, b := e.do("POST", "api/environments", map[string]any{"name": "sixes", "python": "3.11"}, nil, nil); r.StatusCode != 409 {
		t.Fatalf("the same name again: %d %s", r.StatusCode, b)
	}
	var list []map[string]any
	if r, b := e.do("GET", "api/environments", nil, nil, &list); r.StatusCode != 200 || len(list) != 1 || list[0]["state"] != broker.EnvQueued {
		t.Fatalf("list: %d %s", r.StatusCode, b)
	}

	// What a build worker publishes appears in /api/kernelspecs; an
	// entry that is not a well-formed environment spec does not.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	envs, err := kbjs.OpenEnvs(ctx, e.bus.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := json.Marshal(broker.EnvSpec{Name: "sixes", DisplayName: "Six", Python: "3.11", RM: "local", Digest: "sha256-" + strings.Repeat("a", 64), Public: true})
	forged, _ := json.Marshal(map[string]any{"name": "forged", "argv": []string{"/bin/sh", "-c", "id"}})
	if _, err := envs.Specs.Put(ctx, "forged", forged); err != nil {
		t.Fatal(err)
	}
	if _, err := envs.Specs.Put(ctx, "sixes", good); err != nil {
		t.Fatal(err)
	}
	var specs struct {
		Kernelspecs map[string]struct {
			Spec specBody `json:"spec"`
		} `json:"kernelspecs"`
	}
	jstest.WaitFor(t, 10*time.Second, "the environment's spec", func() bool {
		e.do("GET", "api/kernelspecs", nil, nil, &specs)
		_, ok := specs.Kernelspecs["sixes"]
		return ok
	})
	if _, ok := specs.Kernelspecs["forged"]; ok {
		t.Fatal("a forged kb_specs entry is served")
	}
	if argv := specs.Kernelspecs["sixes"].Spec.Argv; len(argv) == 0 || argv[0] != "{env_prefix}/bin/python" {
		t.Fatalf("argv %v does not run the environment's own python", argv)
	}
	if r, b := e.do("DELETE", "api/environments/sixes", nil, nil, nil); r.StatusCode != 204 {
		t.Fatalf("delete: %d %s", r.StatusCode, b)
	}
	if r, b := e.do("GET", "api/environments/sixes", nil, nil, nil); r.StatusCode != 404 {
		t.Fatalf("after delete: %d %s", r.StatusCode, b)
	}
	specs.Kernelspecs = nil // Unmarshal would merge into the old map
	e.do("GET", "api/kernelspecs", nil, nil, &specs)
	if _, ok := specs.Kernelspecs["sixes"]; ok {
		t.Fatal("the deleted environment's spec is still served")
	}
}
