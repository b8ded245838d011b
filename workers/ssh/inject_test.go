package ssh

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/jetstream/jstest"
	"github.com/rs/zerolog"
)

// hostile are values that would run a command if they reached a shell
// line unquoted (JEG's advisories: KERNEL_* values in SSH command lines).
func hostile(mark string) []string {
	return []string{
		"a; touch " + mark, "$(touch " + mark + ")", "`touch " + mark + "`", "a' ; touch " + mark + " ; '",
		"a\" ; touch " + mark + " ; \"", "a | touch " + mark, "a && touch " + mark, "-oProxyCommand=touch " + mark,
	}
}

// The start script the worker runs on a host, run here by a real /bin/sh:
// argv, spec env and client env with shell metacharacters reach the
// launcher inertly inside its config, byte for byte, and run nothing.
func TestLaunchScriptPassesHostileValuesInertly(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("setsid (util-linux) is not installed here")
	}
	dir := t.TempDir()
	mark := filepath.Join(dir, "pwned")
	got := filepath.Join(dir, "config")
	// A stand-in launcher: it keeps the config it reads on stdin.
	launcher := filepath.Join(dir, "launcher")
	if err := os.WriteFile(launcher, []byte("#!/bin/sh\ncat > "+got+".tmp && mv "+got+".tmp "+got+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for i, v := range hostile(mark) {
		env["KERNEL_V"+string(rune('A'+i))] = v
	}
	cfg := &broker.LaunchConfig{V: 1, KernelID: "00000000-0000-4000-8000-000000000001", Spec: "s",
		Argv: append([]string{"python3", "-c"}, hostile(mark)...), Env: env, NATSURLs: "nats://127.0.0.1:1"}
	enc, err := cfg.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", launchScript(cfg, launcher, filepath.Join(dir, "logs", "k.log")))
	cmd.Stdin = strings.NewReader(enc + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script: %v: %s", err, out)
	}
	var data []byte
	jstest.WaitFor(t, 10*time.Second, "the launcher's config", func() bool {
		data, err = os.ReadFile(got)
		return err == nil
	})
	if strings.TrimSpace(string(data)) != enc {
		t.Fatalf("the config reached the launcher altered:\n got %q\nwant %q", data, enc)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Fatal("a hostile value ran a command")
	}
	if s := launchScript(cfg, launcher, "/x/k.log"); strings.Contains(s, "touch") {
		t.Fatalf("a hostile value is part of the script:\n%s", s)
	}
}

// Values that choose a remote user or host are checked before any host is
// contacted: a hostile KERNEL_USERNAME (when impersonating) or
// KERNEL_REMOTE_HOST is refused, as is a kernel id that is not a file name.
func TestStartRefusesHostileUserHostAndID(t *testing.T) {
	// No connection is ever made: every case fails its check first.
	cfg := Config{Hosts: []string{"h1:22"}, Impersonate: true, User: "kb", Placement: RoundRobin}
	b := &Backend{cfg: cfg, hosts: newHosts(time.Minute), log: zerolog.Nop(), installed: map[connKey]bool{}}
	mark := filepath.Join(t.TempDir(), "pwned")
	// What a client chooses is refused as its mistake: 400, not 500.
	for _, c := range []broker.LaunchConfig{
		{KernelID: "k1", User: "a;id"},
		{KernelID: "k1", Env: map[string]string{EnvRemoteHost: "h1;id"}},
		{KernelID: "k1", Env: map[string]string{EnvRemoteHost: "h2"}},
	} {
		_, err := b.Start(context.Background(), &c)
		var be *broker.Error
		if !errors.As(err, &be) || be.Status != 400 {
			t.Errorf("%+v: want a 400, got %v", c, err)
		}
	}
	for _, v := range hostile(mark) {
		for _, c := range []struct {
			name string
			cfg  broker.LaunchConfig
		}{
			{"user", broker.LaunchConfig{KernelID: "k1", User: v}},
			{"remote host", broker.LaunchConfig{KernelID: "k1", Env: map[string]string{EnvRemoteHost: v}}},
			{"kernel id", broker.LaunchConfig{KernelID: v}},
			{"remote_hosts", broker.LaunchConfig{KernelID: "k1", RMConfig: map[string]any{"remote_hosts": []any{v}}}},
		} {
			if _, err := b.Start(context.Background(), &c.cfg); err == nil {
				t.Errorf("%s %q: accepted", c.name, v)
			}
		}
	}
}
