// Command benchauth measures what token verification costs at the door:
// WebSocket handshakes per second (dial, upgrade through the balancer to a
// node, welcome, close) with auth off, with an HMAC secret (HS256) and with
// an RSA public key (RS256). The balancer and the node each verify the
// token once per connection; no message path verifies anything.
//
// Each setup is its own local cluster (real binaries, one balancer and one
// node, loopback). Rounds run the setups one after another in rotating
// order, and the table reports each setup's median and the median of its
// per-round ratio to "off", so a shared, noisy machine affects all alike.
//
//	go run ./scripts/benchauth [-workers 32] [-duration 3s] [-rounds 5]
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ringcast/ringcast/pkg/clustertest"
)

const secret = "benchauth-secret-0123456789abcdef"

// setup is one cluster under test and the tokens its clients present.
type setup struct {
	name   string
	args   []string
	tokens []string // one per client id; empty = auth off
	c      *clustertest.Cluster
	rates  []float64
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchauth:", err)
		os.Exit(1)
	}
}

func run() error {
	workers := flag.Int("workers", 32, "concurrent clients, each opening one connection after another")
	duration := flag.Duration("duration", 3*time.Second, "length of one measurement")
	rounds := flag.Int("rounds", 5, "rounds; every setup is measured once per round")
	ids := flag.Int("ids", 2000, "distinct client ids (tokens) cycled through")
	flag.Parse()

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "benchauth-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pemFile := filepath.Join(dir, "pub.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	mint := func(m jwt.SigningMethod, k any) []string {
		out := make([]string, *ids)
		for i := range out {
			out[i], _ = jwt.NewWithClaims(m, jwt.MapClaims{
				"sub": fmt.Sprintf("b%d", i), "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"room:*"},
			}).SignedString(k)
		}
		return out
	}
	setups := []*setup{
		{name: "off"},
		{name: "HS256", args: []string{"-token-hmac-secret", secret}, tokens: mint(jwt.SigningMethodHS256, []byte(secret))},
		{name: "RS256", args: []string{"-token-public-key", pemFile}, tokens: mint(jwt.SigningMethodRS256, key)},
	}
	ctx := context.Background()
	for _, s := range setups {
		s.c, err = clustertest.Start(ctx, clustertest.Options{Nodes: 1, Args: s.args, BalancerArgs: clustertest.NoAdmissionLimits,
			NodeArgs: []string{"-max-pending", "4096"}})
		if err != nil {
			return fmt.Errorf("start %s: %w", s.name, err)
		}
		defer s.c.Close()
		defer s.c.RemoveLogs()
	}
	fmt.Printf("handshakes/s through the balancer, %d workers, %v per measurement, %d rounds (GOMAXPROCS of this machine: shared)\n\n", *workers, *duration, *rounds)
	for r := range *rounds {
		for i := range setups {
			s := setups[(i+r)%len(setups)]
			rate, errs := measure(s, *workers, *ids, *duration)
			s.rates = append(s.rates, rate)
			if errs > 0 {
				fmt.Printf("round %d %s: %d failed handshakes\n", r+1, s.name, errs)
			}
		}
	}
	fmt.Printf("%-8s %12s %12s %12s %18s\n", "auth", "median/s", "min/s", "max/s", "vs off (median)")
	for _, s := range setups {
		ratios := make([]float64, len(s.rates))
		for i := range s.rates {
			ratios[i] = s.rates[i] / setups[0].rates[i]
		}
		fmt.Printf("%-8s %12.0f %12.0f %12.0f %17.2fx\n", s.name, median(s.rates), slices.Min(s.rates), slices.Max(s.rates), median(ratios))
	}
	return nil
}

// measure runs workers closed loops of handshakes for d and returns the
// completed handshakes per second and the failures.
func measure(s *setup, workers, ids int, d time.Duration) (float64, int64) {
	var done, failed, next atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(stop) {
				i := int(next.Add(1)) % ids
				q := fmt.Sprintf("client_id=b%d", i)
				if len(s.tokens) > 0 {
					q += "&token=" + s.tokens[i]
				}
				if err := handshake(s.c.URL() + "?" + q); err != nil {
					failed.Add(1)
					continue
				}
				done.Add(1)
			}
		})
	}
	start := time.Now()
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds(), failed.Load()
}

// handshake dials, reads the welcome frame's header and payload, and
// closes with a close frame.
func handshake(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, br, _, err := ws.Dial(ctx, url)
	if err != nil {
		return err
	}
	defer nc.Close()
	var r io.Reader = nc
	if br != nil {
		r = io.MultiReader(br, nc)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	h, err := ws.ReadHeader(r)
	if err != nil {
		return err
	}
	if h.OpCode != ws.OpText {
		return errors.New("first frame is not the welcome")
	}
	if _, err := io.CopyN(io.Discard, r, h.Length); err != nil {
		return err
	}
	ws.WriteFrame(nc, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetLinger(0) // no TIME_WAIT pile-up over thousands of handshakes
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
