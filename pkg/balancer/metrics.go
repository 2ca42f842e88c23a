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
	}, func() float64 { return float64(len(s.cluster.View().Warming())) }))
	return m
}
