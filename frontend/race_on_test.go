//go:build race

package frontend

// slow scales the tests' waits under the race detector (task test:race),
// which makes the code several times slower on a loaded CI machine.
const slow = 5
