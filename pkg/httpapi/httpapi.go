// Package httpapi is the HTTP API plumbing nodes and balancers share: JSON and
// error bodies, bounded bodies, code → status, the health probe, server bounds.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/wire"
)

// Bounds of every node and balancer HTTP server.
const (
	// MaxHeaderBytes caps a request head (request line and headers); past
	// it the server answers 431. 32 KiB holds any browser's cookies and a
	// token several times over.
	MaxHeaderBytes = 32 << 10
	// ReadHeaderTimeout bounds reading a request head.
	ReadHeaderTimeout = 5 * time.Second
	// BodyTimeout bounds reading an API request body (DecodeBody); a body
	// still arriving after it gets 408.
	BodyTimeout = 10 * time.Second
	// IdleTimeout closes a keep-alive connection that sent no request.
	IdleTimeout = 60 * time.Second
)

// bodyTimeout is BodyTimeout; tests shorten it.
var bodyTimeout = BodyTimeout

// NewServer returns an HTTP server for h with the bounds above. Hijacked
// connections (WebSockets) are the hijacker's to bound.
func NewServer(h http.Handler, log *zap.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          zap.NewStdLog(log),
	}
}

// statuses maps every wire error code to its HTTP status.
var statuses = map[string]int{
	wire.CodeBadRequest:        http.StatusBadRequest,
	wire.CodeBadJSON:           http.StatusBadRequest,
	wire.CodeTooLarge:          http.StatusRequestEntityTooLarge,
	wire.CodeUnknownOp:         http.StatusBadRequest,
	wire.CodeBadChannel:        http.StatusBadRequest,
	wire.CodeBadClientID:       http.StatusBadRequest,
	wire.CodeTooManyChannels:   http.StatusBadRequest,
	wire.CodeNotSubscribed:     http.StatusBadRequest,
	wire.CodeBridgeUnavailable: http.StatusServiceUnavailable,
	wire.CodeInternal:          http.StatusInternalServerError,
	wire.CodeNoNodes:           http.StatusServiceUnavailable,
	wire.CodeNotReady:          http.StatusServiceUnavailable,
	wire.CodeNodeUnreachable:   http.StatusBadGateway,
	wire.CodeUnauthorized:      http.StatusUnauthorized,
	wire.CodeForbidden:         http.StatusForbidden,
	wire.CodeTooManyConns:      http.StatusTooManyRequests,
	wire.CodeOverloaded:        http.StatusServiceUnavailable,
}

// Serve serves srv on ln until srv is shut down (then nil).
func Serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", err)
	}
	return nil
}

// Status is the HTTP status of an error with code; an unknown code is 500.
func Status(code string) int {
	if s, ok := statuses[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// WriteJSON writes v as the JSON body of an answer.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// WriteOK writes 200 {"ok": true}.
func WriteOK(w http.ResponseWriter) { WriteJSON(w, http.StatusOK, map[string]any{"ok": true}) }

// WriteError writes the error body {"ok": false, "code", "message"} with the
// status of code.
func WriteError(w http.ResponseWriter, code, msg string) {
	WriteJSON(w, Status(code), map[string]any{"ok": false, "code": code, "message": msg})
}

// WriteWireError writes err as an error body: a *wire.Error keeps its code,
// anything else is internal.
func WriteWireError(w http.ResponseWriter, err error) {
	var we *wire.Error
	if !errors.As(err, &we) {
		we = &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
	}
	WriteError(w, we.Code, we.Message)
}

// DecodeBody reads r's body, at most limit bytes within BodyTimeout, and
// unmarshals it into v.
// It returns the body; on failure it has written a too_large, bad_request or
// bad_json answer (408 for a body too slow) and returns false.
func DecodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) ([]byte, bool) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.Is(err, os.ErrDeadlineExceeded) {
			w.Header().Set("Connection", "close")
			WriteJSON(w, http.StatusRequestTimeout, map[string]any{"ok": false, "code": wire.CodeBadRequest,
				"message": "request body not received within " + bodyTimeout.String()})
		} else if errors.As(err, &mbe) {
			WriteError(w, wire.CodeTooLarge, err.Error())
		} else {
			WriteError(w, wire.CodeBadRequest, err.Error())
		}
		return nil, false
	}
	if err := json.Unmarshal(body, v); err != nil {
		WriteError(w, wire.CodeBadJSON, err.Error())
		return nil, false
	}
	return body, true
}

// ServeHealthz answers GET /healthz: 200 while the process serves HTTP.
func ServeHealthz(w http.ResponseWriter, _ *http.Request) { WriteOK(w) }

// Healthy reports whether the node serving HTTP at addr answers GET /healthz
// with 200 within timeout. Balancers and peers use it to tell a node that
// crashed or froze from one gossip merely lost track of.
func Healthy(ctx context.Context, c *http.Client, addr string, timeout time.Duration) bool {
	return addr != "" && Probe(ctx, c, "http://"+addr+"/healthz", timeout) == nil
}

// Probe GETs url within timeout and returns nil when it answers 200, or an
// error with the status and the start of the body.
func Probe(ctx context.Context, c *http.Client, url string, timeout time.Duration) error {
	return Get(ctx, c, url, timeout, nil)
}

// Get is Probe that also decodes the 200 answer's JSON body (at most 1 MiB)
// into v, unless v is nil.
func Get(ctx context.Context, c *http.Client, url string, timeout time.Duration, v any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s %s", url, resp.Status, bytes.TrimSpace(body))
	}
	if v == nil {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return json.Unmarshal(body, v)
}

// HealthcheckCommand is the first argument that makes a binary probe
// instead of serve: a FROM scratch image has no shell and no curl, so a
// container's health check runs `node healthcheck http://127.0.0.1:9000/readyz`.
const HealthcheckCommand = "healthcheck"

// Healthcheck runs the health check command; args follow the command.
func Healthcheck(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: healthcheck http://127.0.0.1:PORT/readyz")
	}
	if err := Probe(ctx, http.DefaultClient, args[0], 3*time.Second); err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	return nil
}
