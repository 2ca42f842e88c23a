// Package testkit is what ringcast's tests share: waiting with a deadline, metrics from a
// registry, goleak allowances, a throwaway CA, loopback TCP servers and echo checks.
package testkit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

// Wait calls f every 10 ms until it returns nil, and returns nil; after
// timeout (or when ctx is done) it returns f's last error.
func Wait(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-t.C:
		}
	}
}

// Until reports whether cond holds within timeout, polling like Wait.
func Until(timeout time.Duration, cond func() bool) bool {
	return Wait(context.Background(), timeout, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	}) == nil
}

// Eventually fails tb (with the formatted message) unless cond holds within
// timeout. Tests wait for conditions this way, never with sleeps. Call it
// from the test goroutine only (it calls Fatalf); elsewhere use Until.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	if !Until(timeout, cond) {
		tb.Fatalf("after %v: %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Metric returns the value of the counter or gauge (a histogram's sample
// count) name in g, summed over the series whose label values start with
// labels (in label-name order), and whether any such series exists. Tests assert metrics here, never through
// log text or the /metrics page.
func Metric(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	tb.Helper()
	families, err := g.Gather()
	if err != nil {
		tb.Fatalf("gather metrics: %v", err)
	}
	var total float64
	found := false
	for _, f := range families {
		if f.GetName() == name {
			v, ok := sum(f, labels)
			total, found = total+v, found || ok
		}
	}
	return total, found
}

// sum adds up the values of f's series whose label values start with
// labels, and reports whether there was one.
func sum(f *dto.MetricFamily, labels []string) (float64, bool) {
	var total float64
	found := false
next:
	for _, m := range f.GetMetric() {
		got := m.GetLabel()
		if len(got) < len(labels) {
			continue
		}
		for i, l := range labels {
			if got[i].GetValue() != l {
				continue next
			}
		}
		total += value(m)
		found = true
	}
	return total, found
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// MemberlistLeaks are the goroutines goleak must allow in tests that run
// memberlist in-process: its Shutdown does not wait for a probe in flight,
// which ends on its own within a probe interval (longer when memberlist's
// awareness has stretched it), after Run has returned.
var MemberlistLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).sendPingAndWaitForAck"),
}

// Scrape reads metric name from the Prometheus text exposition at url (a
// process's /metrics), summed over its series whose label values start
// with labels (in label-name order), like Metric. For other processes, whose
// registry a test cannot reach in memory; the text is parsed, not grepped.
func Scrape(ctx context.Context, url, name string, labels ...string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", url, err)
	}
	f, ok := families[name]
	if !ok {
		return 0, fmt.Errorf("%s has no metric %s", url, name)
	}
	v, _ := sum(f, labels)
	return v, nil
}
