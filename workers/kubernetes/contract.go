package kubernetes

import "github.com/kernelbus/kernelbus/workers"

// The optional extras of workers.Backend this backend has, checked at
// compile time (the pool finds them by type assertion).
var (
	_ workers.Reporter  = (*Backend)(nil)
	_ workers.UserBound = (*Backend)(nil)
)
