package broker

import "testing"

func TestValidRequirement(t *testing.T) {
	for _, ok := range []string{"six", "tabulate==0.9.0", "requests[socks,security]>=2,<3", "zope.interface ~= 6.0", "a_b-c.d===1.0+local"} {
		if err := ValidRequirement(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-r /etc/shadow", "--index-url=http://x", "-e .", "six @ https://evil/six.whl",
		"./local/path", "/abs/path.whl", "six; python_version<'4'", "six==1 --hash=sha256:x", "six\nnumpy", "x==1 ; os.system"} {
		if err := ValidRequirement(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEnvSpecRunsItsOwnPython(t *testing.T) {
	s := (&EnvSpec{Name: "tab", Digest: "sha256-" + string(make([]byte, 0)), Owner: "alice", RM: RMLocal}).KernelSpec()
	if s.Argv[0] != "{env_prefix}/bin/python" {
		t.Fatalf("argv %v", s.Argv)
	}
	if rm, _ := s.RM(); rm != RMLocal {
		t.Fatalf("rm %s", rm)
	}
	if u := s.RMConfig()["authorized_users"]; u == nil {
		t.Fatal("a private environment's spec names no authorized user")
	}
	c := &LaunchConfig{Argv: s.Argv, Env: s.Env}
	c.FillEnvPrefix("/cache/sha256-x")
	if c.Argv[0] != "/cache/sha256-x/bin/python" || c.Env["VIRTUAL_ENV"] != "/cache/sha256-x" || s.Env["VIRTUAL_ENV"] != "{env_prefix}" {
		t.Fatalf("filled %v %v (spec env %v)", c.Argv, c.Env, s.Env)
	}
}
