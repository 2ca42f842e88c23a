package session

import (
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestRequestRateBucket checks allowFrame's bucket: a burst of twice the
// rate, then one frame per interval, and continuations free.
func TestRequestRateBucket(t *testing.T) {
	c := &Conn{u: &Upgrader{rate: newRateLimit(100)}}
	text, cont := ws.Header{OpCode: ws.OpText}, ws.Header{OpCode: ws.OpContinuation}
	for i := range 200 {
		if !c.allowFrame(text) {
			t.Fatalf("frame %d of the burst of 200 refused", i+1)
		}
	}
	if c.allowFrame(text) {
		t.Fatal("frame 201 of a burst at rate 100 allowed")
	}
	if !c.allowFrame(cont) {
		t.Fatal("a continuation was refused")
	}
	c.tat -= int64(10 * time.Millisecond) // 10 ms pass: one more token
	if !c.allowFrame(text) {
		t.Fatal("refused after one interval")
	}
	if c.allowFrame(text) {
		t.Fatal("two frames allowed after one interval")
	}
	c.tat -= int64(time.Hour) // long idle: the bucket is full again, not more
	for i := range 200 {
		if !c.allowFrame(text) {
			t.Fatalf("after an hour idle, frame %d of 200 refused", i+1)
		}
	}
	if c.allowFrame(text) {
		t.Fatal("an hour idle saved more than the burst")
	}
}
