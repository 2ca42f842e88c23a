// Package wire is ringcast's WebSocket protocol v1 without I/O: JSON frames,
// client id and channel validation, error and close codes, upgrade checks.
package wire
