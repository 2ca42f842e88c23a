//go:build race

package clustertest

// raceEnabled makes Build compile the binaries with the race detector when
// the tests themselves run with it, so end-to-end runs check the processes
// too.
const raceEnabled = true
