package jstest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// Eventually polls cond until it holds, backing off from 5 ms to 200 ms,
// and reports whether it did within d. Tests that report a miss
// themselves (t.Errorf and carry on) use it; the others use WaitFor.
func Eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for wait := 5 * time.Millisecond; !cond(); wait = min(2*wait, 200*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
	return true
}

// WaitFor polls cond until it holds, backing off from 5 ms to 200 ms, and
// fails the test, naming what it waited for, when d has passed. Tests wait
// for conditions this way, never by sleeping a fixed time.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(d, cond) {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// WaitForNil is WaitFor for a check that says what is still wrong: it
// polls f until it returns nil and fails the test with f's last error.
func WaitForNil(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	var err error
	if !Eventually(d, func() bool { err = f(); return err == nil }) {
		t.Fatalf("still failing after %s: %v", d, err)
	}
}

// GetOK GETs url and says why it did not answer 200 (nil when it did): a
// check for WaitForNil while a server comes up.
func GetOK(url string) error {
	r, err := http.Get(url)
	if err != nil {
		return err
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, r.Status)
	}
	return nil
}
