package redis

import (
	"context"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// go-redis logs every failed dial; the tests kill servers on purpose.
	goredis.SetLogger(quiet{})
	goleak.VerifyTestMain(m,
		// go-redis redials a pool that failed to dial every second until
		// it is closed; the goroutine notices the close on its next wake.
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}
