package testkit

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMetricAndScrape reads one counter vector in memory and through its
// /metrics text: both sum the series whose label values start with the
// given ones.
func TestMetricAndScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t_total", Help: "test"}, []string{"a", "b"})
	reg.MustRegister(c)
	c.WithLabelValues("x", "1").Add(2)
	c.WithLabelValues("x", "2").Add(3)
	c.WithLabelValues("y", "1").Add(5)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	for _, tt := range []struct {
		labels []string
		want   float64
		found  bool
	}{
		{nil, 10, true},
		{[]string{"x"}, 5, true},
		{[]string{"x", "2"}, 3, true},
		{[]string{"z"}, 0, false},
	} {
		if v, ok := Metric(t, reg, "t_total", tt.labels...); v != tt.want || ok != tt.found {
			t.Errorf("Metric%v = %v, %v; want %v, %v", tt.labels, v, ok, tt.want, tt.found)
		}
		if v, err := Scrape(context.Background(), srv.URL, "t_total", tt.labels...); v != tt.want || err != nil {
			t.Errorf("Scrape%v = %v, %v; want %v", tt.labels, v, err, tt.want)
		}
	}
	if v, ok := Metric(t, reg, "none_total"); v != 0 || ok {
		t.Errorf("Metric of a missing name = %v, %v; want 0, false", v, ok)
	}
	if _, err := Scrape(context.Background(), srv.URL, "none_total"); err == nil {
		t.Error("Scrape of a missing name: no error")
	}
}
