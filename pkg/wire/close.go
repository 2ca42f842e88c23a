package wire

// Close codes, the one table of them (DESIGN.md §6).
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001 // drain
	ClosePolicy         = 1008 // origin, auth
	CloseTooBig         = 1009
	CloseInternal       = 1011
	CloseServiceRestart = 1012
	CloseTryAgainLater  = 1013 // overload
	CloseUnauthorized   = 4001
	CloseSlowConsumer   = 4008
	CloseMoved          = 4009 // rebalance
)
