// Package e2e holds the end-to-end tests: real balancer and node processes,
// started by clustertest, driven through pkg/client and raw WebSockets.
package e2e
