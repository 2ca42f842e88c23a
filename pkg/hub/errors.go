package hub

import (
	"context"
	"errors"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

// WireError maps an error of the hub or its bridge to the protocol error a
// client is told: in an error frame, or as an HTTP API error body.
func WireError(err error) *wire.Error {
	var we *wire.Error
	switch {
	case errors.As(err, &we):
		return we
	case errors.Is(err, ErrTooManyChannels):
		return &wire.Error{Code: wire.CodeTooManyChannels, Message: err.Error()}
	case errors.Is(err, bridge.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return &wire.Error{Code: wire.CodeBridgeUnavailable, Message: err.Error()}
	}
	return &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
}
