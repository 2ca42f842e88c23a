// Package wire defines ringcast's WebSocket protocol v1: the JSON frames
// clients and nodes exchange, the validation of client ids and channel names,
// error codes and close codes. It does no I/O; CheckUpgrade inspects an HTTP upgrade request.
package wire
