// Command kb-synthkernel is the synthetic Jupyter kernel of the load tests
// (see package launcher/synthkernel for what it answers and its directive
// language).
//
// Usage: kb-synthkernel <connection-file>
package main

import (
	"os"

	"github.com/kernelbus/kernelbus/launcher/synthkernel"
)

func main() { os.Exit(synthkernel.Main(os.Args[1:])) }
