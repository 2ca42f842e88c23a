package balancer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	epoch prometheus.Gauge
}

func newMetrics(_ *Server, reg prometheus.Registerer) *metrics {
	m := &metrics{
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ringcast_balancer_ring_epoch", Help: "Ring epoch of this balancer's membership view.",
		}),
	}
	reg.MustRegister(m.epoch)
	return m
}
