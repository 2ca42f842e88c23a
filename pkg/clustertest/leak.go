package clustertest

import "go.uber.org/goleak"

// MemberlistLeaks are the goroutines goleak must allow in tests that run
// memberlist in-process: its Shutdown does not wait for a probe in flight,
// which ends on its own within a probe interval (longer when memberlist's
// awareness has stretched it), after Run has returned.
var MemberlistLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).sendPingAndWaitForAck"),
}
