package wire

import (
	"net/http"
	"strings"
)

// CheckUpgrade returns why r is not a WebSocket upgrade (RFC 6455 §4.2.1)
// that ringcast accepts, or "". It checks the request line and the handshake
// headers only, including that each Sec-WebSocket-Key and -Version header
// appears exactly once: two keys are two answers a proxy and a node could
// disagree on.
func CheckUpgrade(r *http.Request) string {
	switch {
	case r.Method != http.MethodGet:
		return "websocket upgrade needs GET, got " + r.Method
	case r.ProtoMajor != 1 || r.ProtoMinor < 1:
		return "websocket upgrade needs HTTP/1.1, got " + r.Proto
	case r.Host == "":
		return "websocket upgrade needs a Host"
	case !HasToken(r.Header, "Connection", "upgrade"):
		return "not a websocket upgrade: missing Connection: upgrade"
	case !HasToken(r.Header, "Upgrade", "websocket"):
		return "not a websocket upgrade: missing Upgrade: websocket"
	case r.ContentLength != 0 || len(r.TransferEncoding) > 0:
		return "websocket upgrade must not have a body"
	case len(r.Header.Values("Sec-Websocket-Key")) != 1:
		return "websocket upgrade needs exactly one Sec-WebSocket-Key"
	case len(r.Header.Values("Sec-Websocket-Version")) != 1:
		return "websocket upgrade needs exactly one Sec-WebSocket-Version"
	}
	return ""
}

// HasToken reports whether the comma-separated header name lists token,
// compared without case.
func HasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
