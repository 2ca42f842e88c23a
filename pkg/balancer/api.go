package balancer

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/ringcast/ringcast/pkg/cluster"
	"github.com/ringcast/ringcast/pkg/httpapi"
	"github.com/ringcast/ringcast/pkg/webclient"
	"github.com/ringcast/ringcast/pkg/wire"
)

// maxBody bounds admin API request bodies.
const maxBody = 1 << 20

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /ws", s.proxy)
	mux.HandleFunc("GET /v1/cluster", s.serveCluster)
	mux.HandleFunc("GET /v1/owner", s.serveOwner)
	mux.HandleFunc("POST /v1/publish", s.auth.RequireAPIKey(s.servePublish))
	mux.HandleFunc("POST /v1/send", s.auth.RequireAPIKey(s.serveSend))
	mux.HandleFunc("GET /healthz", httpapi.ServeHealthz)
	mux.HandleFunc("GET /readyz", s.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	web := webclient.Handler()
	mux.Handle("GET /{$}", web)
	mux.Handle("GET /client.js", web)
	mux.Handle("GET /client.d.ts", web)
	return mux
}

type nodeInfo struct {
	ID          string `json:"id"`
	Addr        string `json:"addr"`
	State       string `json:"state"`
	Warming     bool   `json:"warming,omitempty"`     // alive, back after a departure, not on the ring yet
	Unreachable bool   `json:"unreachable,omitempty"` // this balancer's probes fail: routed around
	Connections int    `json:"connections"`
}

func (s *Server) serveCluster(w http.ResponseWriter, _ *http.Request) {
	v := s.cluster.View()
	conns := s.proxy.Connections()
	nodes := []nodeInfo{}
	for _, m := range v.Members {
		if m.Role == cluster.RoleNode {
			nodes = append(nodes, nodeInfo{ID: m.ID, Addr: m.Addr, State: string(m.State), Warming: m.Warming(), Unreachable: s.reach.isDown(m.ID), Connections: conns[m.ID]})
		}
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"epoch": v.Epoch, "nodes": nodes})
}

func (s *Server) serveOwner(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("client_id")
	if err := wire.ValidateClientID(id); err != nil {
		httpapi.WriteWireError(w, err)
		return
	}
	v := s.cluster.View()
	if v.Ring == nil {
		httpapi.WriteError(w, wire.CodeNoNodes, "no node is alive")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"node": v.Ring.Owner(id), "epoch": v.Epoch})
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	if !s.cluster.Joined() {
		httpapi.WriteError(w, wire.CodeNotReady, "not joined: no seed accepted this balancer (is -cluster-key the cluster's?)")
		return
	}
	if v := s.cluster.View(); v.Ring == nil {
		httpapi.WriteError(w, wire.CodeNotReady, "no node is alive")
		return
	}
	httpapi.WriteOK(w)
}

// servePublish forwards to the ring owner of the channel, so HTTP publishes
// to one channel keep their order.
func (s *Server) servePublish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channel string `json:"channel"`
	}
	body, ok := httpapi.DecodeBody(w, r, maxBody, &req)
	if !ok {
		return
	}
	if err := wire.ValidateChannel(req.Channel); err != nil {
		httpapi.WriteWireError(w, err)
		return
	}
	s.forward(w, r, "ch:"+req.Channel, body)
}

// serveSend forwards to the ring owner of the client id.
func (s *Server) serveSend(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ClientID string `json:"client_id"`
	}
	body, ok := httpapi.DecodeBody(w, r, maxBody, &req)
	if !ok {
		return
	}
	if err := wire.ValidateClientID(req.ClientID); err != nil {
		httpapi.WriteWireError(w, err)
		return
	}
	s.forward(w, r, req.ClientID, body)
}

// forward sends body to the ring owner of key. A request is sent at most
// once: only a failed dial (nothing reached the node) moves on to the next
// node for key.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, key string, body []byte) {
	var tried []string
	for attempt := 0; attempt < 3; attempt++ {
		id, addr, err := picker{s}.Pick(key, tried)
		if err != nil {
			httpapi.WriteError(w, wire.CodeNoNodes, err.Error())
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, "http://"+addr+r.URL.Path, bytes.NewReader(body))
		if err != nil {
			httpapi.WriteError(w, wire.CodeInternal, err.Error())
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if a := r.Header.Get("Authorization"); a != "" {
			req.Header.Set("Authorization", a) // the node checks the API key too
		}
		resp, err := s.api.Do(req)
		if err != nil {
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op == "dial" {
				tried = append(tried, id)
				continue
			}
			s.log.Warn("forward api call", zap.String("node", id), zap.String("path", r.URL.Path), zap.Error(err))
			httpapi.WriteError(w, wire.CodeNodeUnreachable, "node "+id+": "+err.Error())
			return
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()
		return
	}
	httpapi.WriteError(w, wire.CodeNoNodes, "no node answered")
}
