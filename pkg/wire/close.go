package wire

// Close codes, the one table of them (DESIGN.md §6).
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001 // drain
	CloseProtocolError  = 1002 // RFC 6455 violated: reserved opcode, bad close frame, bad header
	CloseInvalidData    = 1007 // a text message that is not UTF-8
	ClosePolicy         = 1008 // origin, auth
	CloseTooBig         = 1009
	CloseInternal       = 1011
	CloseServiceRestart = 1012
	CloseTryAgainLater  = 1013 // overload
	CloseUnauthorized   = 4001
	CloseSlowConsumer   = 4008
	CloseMoved          = 4009 // rebalance
	CloseReplaced       = 4010 // a newer connection of the same session
)
