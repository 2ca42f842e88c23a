package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os/signal"
	"sync"
	"syscall"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/wire"
)

// A chat client: it joins a room, prints what is said there and says hello.
// The subscription survives reconnects; with history on, messages missed
// while away are delivered once, in order.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cfg := client.DefaultConfig()
	cfg.URL = "ws://127.0.0.1:8080/ws"
	cfg.ClientID = "alice"
	cfg.OnState = func(s client.State, err error) { log.Printf("link %v (%v)", s, err) }
	cfg.OnSubscribed = func(f wire.Frame) {
		if f.Recovered != nil && !*f.Recovered {
			log.Printf("gap in %s: some messages were lost", f.Channel)
		}
	}
	c, err := client.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	sub, err := c.Subscribe("room", func(m client.Message) {
		fmt.Printf("%s: %s\n", m.From, m.Data)
	})
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		select {
		case <-sub.Ready():
		case <-ctx.Done():
			return
		}
		err := c.Publish(ctx, "room", map[string]string{"text": "hello"})
		var we *wire.Error
		switch {
		case errors.As(err, &we):
			log.Printf("refused: %s", we.Code)
		case errors.Is(err, client.ErrDisconnected):
			log.Print("link dropped: the message may or may not have gone out")
		case err != nil:
			log.Print(err)
		}
	})

	if err := c.Run(ctx); err != nil { // returns when ctx is done
		log.Fatal(err)
	}
}
