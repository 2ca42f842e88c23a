package balancer

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certCheckEvery bounds how often a handshake looks at the certificate
// files: a renewed pair is served within this long, and a burst of
// handshakes costs two stat calls per interval.
const certCheckEvery = time.Second

// certs serves a certificate pair from two files and re-reads them when
// either file changes. A pair that fails to load is logged and the last good
// one is kept. Connections already established are never touched.
type certs struct {
	certFile, keyFile string
	log               *zap.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
}

// fileStamp tells a changed file from an unchanged one.
type fileStamp struct {
	mod  time.Time
	size int64
}

func loadCerts(certFile, keyFile string, log *zap.Logger) (*certs, error) {
	c := &certs{certFile: certFile, keyFile: keyFile, log: log}
	stamp, err := c.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load -tls-cert %s / -tls-key %s: %w", certFile, keyFile, err)
	}
	c.cert, c.stamp, c.checked = &cert, stamp, time.Now()
	return c, nil
}

func (c *certs) stamps() ([2]fileStamp, error) {
	var out [2]fileStamp
	for i, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return out, fmt.Errorf("tls pair: %w", err)
		}
		out[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return out, nil
}

// get is tls.Config.GetCertificate: the current pair, re-read first when
// the files changed since the last check.
func (c *certs) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if now.Sub(c.checked) < certCheckEvery {
		return c.cert, nil
	}
	c.checked = now
	stamp, err := c.stamps()
	if err != nil || stamp == c.stamp {
		return c.cert, nil // a file being replaced may be missing for a moment
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Half-written, or the key not yet matching the new certificate:
		// keep serving the old pair and look again on a later handshake.
		c.log.Warn("tls pair changed but does not load, keeping the previous one", zap.Error(err))
		return c.cert, nil
	}
	c.cert, c.stamp = &cert, stamp
	c.log.Info("tls pair reloaded", zap.String("cert", c.certFile))
	return c.cert, nil
}

// tlsConfig serves HTTP/1.1 only: a WebSocket upgrade cannot be hijacked
// from an HTTP/2 stream.
func (c *certs) tlsConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: c.get,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}
}
