package local

// ReadableLogLine is exported to the tests.
var ReadableLogLine = readableLogLine

// HomesDir is where kernels under a uid of their own get their homes.
func HomesDir() string { return homesDir }
