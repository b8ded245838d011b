//go:build !race

package frontend

// slow scales the tests' waits; 1 without the race detector.
const slow = 1
