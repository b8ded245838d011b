//go:build race

package launcher

// raceEnabled shrinks measurements that the race detector slows tenfold.
const raceEnabled = true
