package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/hub"
	"github.com/ringcast/ringcast/pkg/wire"
)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", s.serveWS)
	mux.HandleFunc("POST /v1/publish", s.auth.RequireAPIKey(s.servePublish))
	mux.HandleFunc("POST /v1/send", s.auth.RequireAPIKey(s.serveSend))
	s.probeRoutes(mux)
	if s.mesh != nil {
		mux.Handle("GET /v1/mesh", s.mesh.Handler())
	}
	return mux
}

// probeRoutes are the health, readiness and metrics endpoints, served with
// the API and, with HealthAddr, on a listener of their own. None takes a
// lock client traffic takes (/readyz reads atomics and the gossip view).
func (s *Server) probeRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", httpapi.ServeHealthz)
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	c := s.sess.Upgrade(w, r)
	if c == nil {
		return
	}
	if !s.track(c) {
		s.admit.Leave()
		c.Reject()
	}
}

// admitConn is the node's admission policy for new connections: none while
// draining, and at most MaxPending being set up at once. A burst of
// reconnects (a node just died) is served at the rate attaches complete:
// up to gate.QueueFactor × MaxPending more wait PendingWait for a slot,
// the rest are told to retry and back off.
func (s *Server) admitConn(w http.ResponseWriter, r *http.Request) bool {
	if s.draining.Load() {
		http.Error(w, "node draining", http.StatusServiceUnavailable)
		return false
	}
	if s.sess.Overloaded() {
		s.met.refused.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "node overloaded: over its outbound budget, retry", http.StatusServiceUnavailable)
		return false
	}
	if !s.admit.Enter(r.Context()) {
		s.met.refused.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "node overloaded: too many connections being set up, retry", http.StatusServiceUnavailable)
		return false
	}
	return true
}

type publishRequest struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

type sendRequest struct {
	ClientID string          `json:"client_id"`
	Data     json.RawMessage `json:"data"`
}

func (s *Server) servePublish(w http.ResponseWriter, r *http.Request) {
	var req publishRequest
	if _, ok := httpapi.DecodeBody(w, r, int64(s.cfg.MaxMessage), &req); !ok {
		return
	}
	if err := wire.ValidateChannel(req.Channel); err != nil {
		httpapi.WriteWireError(w, err)
		return
	}
	if len(req.Data) == 0 {
		httpapi.WriteError(w, wire.CodeBadRequest, "publish needs data")
		return
	}
	if s.overloaded(w) {
		return
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	m, err := s.hub.Publish(ctx, bridge.Message{Channel: req.Channel, Data: req.Data})
	if err != nil {
		httpapi.WriteWireError(w, hub.WireError(err))
		return
	}
	out := map[string]any{"ok": true}
	if m.Epoch != "" {
		out["epoch"], out["offset"] = m.Epoch, m.Offset
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) serveSend(w http.ResponseWriter, r *http.Request) {
	var req sendRequest
	if _, ok := httpapi.DecodeBody(w, r, int64(s.cfg.MaxMessage), &req); !ok {
		return
	}
	if err := wire.ValidateClientID(req.ClientID); err != nil {
		httpapi.WriteWireError(w, err)
		return
	}
	if len(req.Data) == 0 {
		httpapi.WriteError(w, wire.CodeBadRequest, "send needs data")
		return
	}
	if s.overloaded(w) {
		return
	}
	ctx, cancel := s.requestCtx(r)
	defer cancel()
	ok, err := s.hub.Send(ctx, bridge.Direct{To: req.ClientID, Data: req.Data})
	if err != nil {
		httpapi.WriteWireError(w, hub.WireError(err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "delivered": ok})
}

// overloaded answers 503 with Retry-After while the node sheds load.
func (s *Server) overloaded(w http.ResponseWriter) bool {
	if !s.sess.Overloaded() {
		return false
	}
	w.Header().Set("Retry-After", "1")
	httpapi.WriteWireError(w, wire.ErrOverloaded)
	return true
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	if err := s.ready(); err != nil {
		httpapi.WriteError(w, wire.CodeNotReady, err.Error())
		return
	}
	httpapi.WriteOK(w)
}

func (s *Server) ready() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	if !s.cluster.Joined() {
		return errors.New("not joined: no seed accepted this node (is -cluster-key the cluster's?)")
	}
	if v := s.cluster.View(); v.Ring == nil || !v.Ring.Has(s.cfg.ID) {
		return errors.New("not joined: this node is not in the ring yet")
	}
	return s.bridge.Ready()
}

func (s *Server) requestCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
}
