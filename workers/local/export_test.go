package local

// ReadableLogLine is exported to the tests.
var ReadableLogLine = readableLogLine

// HomesDir is where kernels under a uid of their own get their homes.
func HomesDir() string { return homesDir }

// IDsInUse is a fresh scanner of the ids processes hold, keeping what it
// read between calls as a worker's does.
func IDsInUse() func(IDRange) map[uint32]bool {
	var c procCache
	return c.idsInUse
}
