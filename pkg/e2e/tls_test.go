package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringcast/ringcast/pkg/client"
	"github.com/ringcast/ringcast/pkg/clustertest"
	"github.com/ringcast/ringcast/pkg/testkit"
	"github.com/ringcast/ringcast/pkg/wire"
)

// TestTLS: a balancer with -tls-cert/-tls-key serves wss:// and HTTPS to a
// Go client that trusts only a test CA, and picks up a renewed pair
// without dropping the connection it relays.
func TestTLS(t *testing.T) {
	ca := testkit.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.WritePair(t, dir, 1)
	c := startCluster(t, clustertest.Options{Nodes: 1, TLSCert: certFile, TLSKey: keyFile, TLSRoots: ca.Pool()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var welcomes atomic.Int32
	got := make(chan string, 16)
	cfg := client.DefaultConfig()
	cfg.URL, cfg.ClientID = c.URL(), "tls-alice"
	cfg.TLS = &tls.Config{RootCAs: ca.Pool()}
	cfg.OnWelcome = func(wire.Frame) { welcomes.Add(1) }
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := cl.Subscribe("lobby", func(m client.Message) { got <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cl.Run(ctx) }()
	t.Cleanup(func() { cl.Close(); <-done })
	select {
	case <-sub.Ready():
	case <-ctx.Done():
		t.Fatal("not subscribed over wss:// within 30 s")
	}
	publish := func(data string) {
		t.Helper()
		resp, err := c.Client().Post(c.HTTP()+"/v1/publish", "application/json",
			bytes.NewBufferString(`{"channel":"lobby","data":"`+data+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s/v1/publish: %s", c.HTTP(), resp.Status)
		}
		select {
		case m := <-got:
			if m != `"`+data+`"` {
				t.Fatalf("received %s, want %q", m, data)
			}
		case <-ctx.Done():
			t.Fatalf("message %q not received", data)
		}
	}
	publish("one")

	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + c.Balancers[0].Addr + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP on the TLS port answered 200")
		}
	}

	serial := func() int64 {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: &tls.Config{RootCAs: ca.Pool()}}
		nc, err := d.DialContext(ctx, "tcp", c.Balancers[0].Addr)
		if err != nil {
			return -1
		}
		defer nc.Close()
		return nc.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 1 {
		t.Fatalf("serving certificate serial %d, want 1", s)
	}
	ca.WritePair(t, dir, 2)
	testkit.Eventually(t, 10*time.Second, func() bool { return serial() == 2 }, "the renewed certificate served")
	publish("two")
	if n := welcomes.Load(); n != 1 {
		t.Errorf("client welcomed %d times, want 1: the renewal dropped its connection", n)
	}
}
