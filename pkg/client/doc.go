// Package client is the Go SDK for ringcast: it connects through the balancer
// and keeps the session alive across reconnects, resubscribing where it left off.
//
// Usage:
//
//	cfg := client.DefaultConfig()
//	cfg.URL = "ws://127.0.0.1:8080/ws"
//	cfg.ClientID = "alice"
//	c, err := client.New(cfg)
//	if err != nil {
//		return err
//	}
//	done := make(chan error, 1)
//	go func() { done <- c.Run(ctx) }() // connects and reconnects until ctx is done or Close
//	defer func() { c.Close(); <-done }()
//
//	sub, err := c.Subscribe("room", func(m client.Message) {
//		fmt.Printf("%s from %s: %s\n", m.Channel, m.From, m.Data)
//	})
//	...
//	<-sub.Ready() // the server confirmed the subscription
//	err = c.Publish(ctx, "room", map[string]string{"text": "hi"}) // waits for the ack
//
// Callbacks (Config hooks and subscription handlers) run one at a time on the
// goroutine that runs Run, in the order frames arrive; they must not block
// long. Publish and Send may be called from a handler.
package client
