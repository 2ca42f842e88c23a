package hub

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	published prometheus.Counter
	delivered prometheus.Counter
}

func newMetrics(h *Hub, reg prometheus.Registerer) *metrics {
	m := &metrics{
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_messages_in_total", Help: "Messages published on this node.",
		}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ringcast_node_messages_out_total", Help: "Frames queued to local connections by fan-out.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.published, m.delivered,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "ringcast_node_connections", Help: "Connections attached to this node.",
			}, func() float64 { return float64(h.Len()) }),
		)
	}
	return m
}
