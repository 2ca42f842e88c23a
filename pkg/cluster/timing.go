package cluster

import (
	"math"
	"time"

	"github.com/hashicorp/memberlist"
)

// timing holds the memberlist settings that decide how long failure
// detection takes.
type timing struct {
	probe   time.Duration // ProbeInterval
	mult    int           // SuspicionMult
	maxMult int           // SuspicionMaxTimeoutMult
}

func timingOf(mc *memberlist.Config) timing {
	return timing{probe: mc.ProbeInterval, mult: mc.SuspicionMult, maxMult: mc.SuspicionMaxTimeoutMult}
}

// Detection says how long this process's failure detection (Config.Detect)
// takes for a member that stops answering, in a cluster of Members
// processes. It is computed from memberlist's rules: a probe fails when no
// ack came within one probe interval; the member is then suspected, and
// declared dead when the suspicion times out. The suspicion lasts
// SuspicionMult × max(1, log10 n) probe intervals once enough peers
// confirmed it, up to SuspicionMaxTimeoutMult times that without them.
type Detection struct {
	Members int
	// Probe is the probe interval: each process probes one peer this often.
	Probe time.Duration
	// Earliest is the shortest time a member must be silent before a peer
	// may declare it dead: one failed probe plus the shortest suspicion. A
	// process that was paused for less cannot have been declared dead.
	Earliest time.Duration
	// Latest bounds when every peer has declared it dead: a full round of
	// probes (each of the other processes probes it at least once per
	// round), one failed probe, and the longest suspicion.
	Latest time.Duration
}

// Detection returns the failure detection timing of this process's
// profile for the current number of members.
func (c *Cluster) Detection() Detection { return c.timing.detection(c.ml.NumMembers()) }

func (t timing) detection(n int) Detection {
	n = max(n, 1)
	scale := math.Max(1, math.Log10(float64(n)))
	minSusp := time.Duration(float64(t.mult) * scale * float64(t.probe))
	maxSusp := minSusp
	// memberlist waits for k = SuspicionMult-2 confirmations (at most n-2
	// exist); with none to wait for, the shortest suspicion applies at once.
	if k := min(t.mult-2, n-2); k >= 1 {
		maxSusp = time.Duration(t.maxMult) * minSusp
	}
	return Detection{
		Members:  n,
		Probe:    t.probe,
		Earliest: t.probe + minSusp,
		Latest:   time.Duration(n)*t.probe + maxSusp,
	}
}
