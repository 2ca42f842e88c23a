package node

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	moved    prometheus.Counter
	refused  prometheus.Counter
	fenced   prometheus.Counter
	paused   prometheus.Counter
	repaired prometheus.Counter
	epoch    prometheus.Gauge
}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_clients_moved_total", Help: "Clients asked to reconnect elsewhere (rebalance or drain).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_connections_refused_total", Help: "Upgrades refused with 503 by admission control.",
		}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_fenced_total", Help: "Sessions closed because the process had been paused past failure detection.",
		}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_repaired_messages_total", Help: "Messages sent from history to local subscribers after the bridge lost messages (Redis subscriber reconnect).",
		}),
		paused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_pauses_total", Help: "Times the process found it had been paused past failure detection (and fenced its sessions).",
		}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ringcast_node_ring_epoch", Help: "Ring epoch of this node's membership view.",
		}),
	}
	reg.MustRegister(m.moved, m.refused, m.fenced, m.paused, m.repaired, m.epoch,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_ring_warming", Help: "Nodes alive again after a departure, held off the ring while they warm up.",
		}, func() float64 {
			if s.cluster == nil {
				return 0
			}
			return float64(len(s.cluster.View().Warming()))
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ringcast_node_accused_total", Help: "Times gossip suspected this node or declared it dead, and it refuted the news (after a pause, CPU starvation or lost packets).",
		}, func() float64 {
			if s.cluster == nil {
				return 0
			}
			return float64(s.cluster.Accused())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_bridge_links", Help: "Live mesh links to other nodes.",
		}, func() float64 {
			if s.mesh == nil {
				return 0
			}
			return float64(s.mesh.Links())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ringcast_node_ready", Help: "1 when the node is ready (joined, bridge up, not draining), as /readyz answers.",
		}, func() float64 {
			if s.ready() != nil {
				return 0
			}
			return 1
		}))
	return m
}
