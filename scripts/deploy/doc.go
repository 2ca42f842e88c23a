// Package deploy holds what runs ringcast outside a developer's shell — the
// FROM scratch image (Dockerfile, image.sh), the test Redis image, the
// compose test override, the Helm chart, Prometheus and Grafana files — and
// the tests that prove them on a Docker engine and with helm.
package deploy
