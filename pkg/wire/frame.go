package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Ops, client → server.
const (
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPublish     = "publish"
	OpSend        = "send"
	OpPing        = "ping"
	OpRefresh     = "refresh"
)

// Ops, server → client.
const (
	OpWelcome      = "welcome"
	OpSubscribed   = "subscribed"
	OpUnsubscribed = "unsubscribed"
	OpMessage      = "message"
	OpDirect       = "direct"
	OpAck          = "ack"
	OpPong         = "pong"
	OpError        = "error"
	OpReconnect    = "reconnect"
	OpRefreshed    = "refreshed"
)

// Reasons carried by a reconnect frame.
const (
	ReasonRebalance = "rebalance"
	ReasonDrain     = "drain"
	ReasonOverload  = "overload"
)

// Error codes carried by error frames and HTTP API error bodies. The HTTP
// status each maps to is in package httpapi, whose test checks every code here.
const (
	CodeBadRequest        = "bad_request"
	CodeBadJSON           = "bad_json"
	CodeTooLarge          = "too_large"
	CodeUnknownOp         = "unknown_op"
	CodeBadChannel        = "bad_channel"
	CodeBadClientID       = "bad_client_id"
	CodeTooManyChannels   = "too_many_channels"
	CodeNotSubscribed     = "not_subscribed"
	CodeBridgeUnavailable = "bridge_unavailable"
	CodeInternal          = "internal"
	CodeNoNodes           = "no_nodes"             // HTTP only: no node is alive to route to
	CodeNotReady          = "not_ready"            // HTTP only: /readyz while not joined or the bridge is down
	CodeNodeUnreachable   = "node_unreachable"     // HTTP only: the balancer reached no answer from the owner node
	CodeUnauthorized      = "unauthorized"         // missing or bad token, refused refresh, missing API key
	CodeForbidden         = "forbidden"            // the token does not allow this subscribe, publish or send
	CodeTooManyConns      = "too_many_connections" // HTTP only: -max-conns-per-client reached
	CodeOverloaded        = "overloaded"           // publish or send refused while the node sheds load (over -max-outbound)
)

// ErrOverloaded refuses a publish or send while the node is over its
// outbound budget: retry after a second.
var ErrOverloaded = &Error{Code: CodeOverloaded, Message: "node overloaded: over its outbound budget, retry later"}

// Position is a point in a channel's history.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// Frame is one protocol frame in either direction. Fields that are absent in
// JSON are zero; pointer fields distinguish "absent" from zero where the
// protocol needs it.
type Frame struct {
	Op          string          `json:"op"`
	ID          json.RawMessage `json:"id,omitempty"`
	Channel     string          `json:"channel,omitempty"`
	Since       *Position       `json:"since,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
	To          string          `json:"to,omitempty"`
	From        string          `json:"from,omitempty"`
	Recovered   *bool           `json:"recovered,omitempty"`
	Epoch       string          `json:"epoch,omitempty"`
	Offset      *uint64         `json:"offset,omitempty"`
	ClientID    string          `json:"client_id,omitempty"`
	Node        string          `json:"node,omitempty"`
	RingEpoch   *uint64         `json:"ring_epoch,omitempty"`
	HeartbeatMS int             `json:"heartbeat_ms,omitempty"`
	Code        string          `json:"code,omitempty"`
	Message     string          `json:"message,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	AfterMS     *int            `json:"after_ms,omitempty"`
	Token       string          `json:"token,omitempty"`
	Exp         *int64          `json:"exp,omitempty"` // refreshed: the token's exp (Unix seconds); absent = none
}

// Error is a protocol-level error: it becomes an error frame and the
// connection stays open.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Decode parses and validates one client → server frame. The returned Frame
// is usable even on error when it carries an ID, so the error reply can echo
// it.
func Decode(b []byte) (Frame, error) {
	var f Frame
	if err := json.Unmarshal(b, &f); err != nil {
		// A field of the wrong type still leaves a well-formed id to echo.
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) || len(f.ID) == 0 || validID(f.ID) != nil {
			return Frame{}, errorf(CodeBadJSON, "malformed JSON: %v", err)
		}
		return Frame{ID: f.ID}, errorf(CodeBadJSON, "malformed JSON: %v", err)
	}
	if len(f.ID) > 0 {
		if err := validID(f.ID); err != nil {
			f.ID = nil
			return f, err
		}
	}
	switch f.Op {
	case OpSubscribe, OpUnsubscribe:
		if err := ValidateChannel(f.Channel); err != nil {
			return f, err
		}
	case OpPublish:
		if err := ValidateChannel(f.Channel); err != nil {
			return f, err
		}
		if len(f.Data) == 0 {
			return f, errorf(CodeBadRequest, "publish needs data")
		}
	case OpSend:
		if err := ValidateClientID(f.To); err != nil {
			return f, errorf(CodeBadClientID, "to: %s", err.(*Error).Message)
		}
		if len(f.Data) == 0 {
			return f, errorf(CodeBadRequest, "send needs data")
		}
	case OpRefresh:
		if f.Token == "" {
			return f, errorf(CodeBadRequest, "refresh needs token")
		}
	case OpPing:
	case "":
		return f, errorf(CodeBadRequest, "frame has no op")
	default:
		return f, errorf(CodeUnknownOp, "unknown op %q", truncate(f.Op, 32))
	}
	return f, nil
}

// validID accepts a JSON string or number as a request id.
func validID(id json.RawMessage) error {
	if len(id) > 160 {
		return errorf(CodeBadRequest, "id too long")
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9':
		return nil
	case bytes.Equal(id, []byte("null")):
		return nil
	}
	return errorf(CodeBadRequest, "id must be a string or a number")
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Encode marshals a server → client frame.
func Encode(f *Frame) []byte {
	b, err := json.Marshal(f)
	if err != nil {
		// Only Data can fail, and Data is always validated JSON.
		b, _ = json.Marshal(&Frame{Op: OpError, Code: CodeInternal, Message: "encode frame"})
	}
	return b
}

// ErrorFrame builds the error reply for err, echoing id.
func ErrorFrame(id json.RawMessage, err error) []byte {
	var we *Error
	if !errors.As(err, &we) {
		we = &Error{Code: CodeInternal, Message: err.Error()}
	}
	return Encode(&Frame{Op: OpError, ID: id, Code: we.Code, Message: we.Message})
}

// Uint64 returns a pointer to v, for optional numeric fields.
func Uint64(v uint64) *uint64 { return &v }

// Int returns a pointer to v, for optional numeric fields.
func Int(v int) *int { return &v }

// Bool returns a pointer to v, for optional boolean fields.
func Bool(v bool) *bool { return &v }
