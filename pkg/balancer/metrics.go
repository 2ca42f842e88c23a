package balancer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	epoch prometheus.Gauge
}

func newMetrics(s *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ringcast_balancer_ring_epoch", Help: "Ring epoch of this balancer's membership view.",
		}),
	}
	reg.MustRegister(m.epoch, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ringcast_balancer_ring_warming", Help: "Nodes alive again after a departure, held off the ring while they warm up.",
	}, func() float64 { return float64(len(s.cluster.View().Warming())) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ringcast_balancer_unreachable_nodes", Help: "Nodes this balancer's own probes cannot reach: their relays were closed and new clients are routed around them.",
	}, func() float64 { return float64(len(s.reach.unreachable())) }))
	return m
}
