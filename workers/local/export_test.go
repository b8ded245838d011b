package local

// ReadableLogLine is exported to the tests.
var ReadableLogLine = readableLogLine
