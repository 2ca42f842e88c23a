package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringcast/ringcast/pkg/proxy"
	"github.com/ringcast/ringcast/pkg/ring"
)

// staticPicker routes like the balancer's picker, over a fixed ring.
type staticPicker struct {
	ring  *ring.Ring
	addrs map[string]string // node id → address
}

func (s staticPicker) Pick(clientID string, excluded []string) (string, string, error) {
	id, err := s.ring.OwnerExcluding(clientID, excluded...)
	if err != nil {
		return "", "", err
	}
	return id, s.addrs[id], nil
}

// runRelay serves proxy.New on a loopback port in front of the given
// backends, prints its address on one line and serves until ctx ends.
func runRelay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	backends := fs.String("backends", "", "comma-separated backend addresses")
	withPprof := fs.Bool("pprof", false, "serve /debug/pprof/profile")
	withTLS := fs.Bool("tls", false, "serve wss:// with a self-signed certificate, as the balancer with -tls-cert does")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *backends == "" {
		return errors.New("-backends is required")
	}
	pick := staticPicker{addrs: make(map[string]string)}
	var ids []string
	for i, a := range strings.Split(*backends, ",") {
		id := fmt.Sprintf("n%d", i+1)
		ids = append(ids, id)
		pick.addrs[id] = a
	}
	var err error
	if pick.ring, err = ring.New(ids); err != nil {
		return err
	}
	// No admission limits: the load comes from a few loopback addresses.
	p, err := proxy.New(proxy.Config{MaxConnsPerIP: -1, ConnRatePerIP: -1}, pick, nil, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	defer p.Close()
	// Routing and server timeouts as the balancer's.
	mux := http.NewServeMux()
	mux.Handle("GET /ws", p)
	if *withPprof {
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 60 * time.Second}
	ln, err := proxy.Listen(ctx, "127.0.0.1:0") // as the balancer listens
	if err != nil {
		return err
	}
	if *withTLS {
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	}
	fmt.Println(ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shctx)
	<-served
	return nil
}

// selfSigned makes a throwaway P-256 certificate for 127.0.0.1.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
