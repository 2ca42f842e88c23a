#!/usr/bin/env bash
# Installs what the tests need when it is missing: staticcheck and helm (go
# install of exact versions, for make lint and the chart test), redis-server,
# redis-sentinel, redis-tools (redis-cli, redis-benchmark), chromium, ca-certificates (copied into the image), docker-compose where a
# Docker engine runs without Compose and, as root, nftables and iproute2
# (Debian packages). Safe to run repeatedly; does nothing when all is there.
#
# With the argument "bench" it installs, instead, the peers the comparison
# benchmarks run next to ringcast (nginx-light, haproxy, wrk: make bench-deps);
# make test never asks for them.
set -euo pipefail
# apt_install installs the Debian packages in need, if any.
apt_install() {
	[ ${#need[@]} -gt 0 ] || return 0
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -q
	$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
}
need=()
if [ "${1:-}" = bench ]; then
	command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
	command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
	command -v wrk >/dev/null 2>&1 || need+=(wrk)
	apt_install
	exit 0
fi
staticcheck_version=0.8.2
staticcheck="$(go env GOPATH)/bin/staticcheck"
if ! "$staticcheck" -version 2>/dev/null | grep -qF "($staticcheck_version)"; then
	echo "installing: staticcheck v$staticcheck_version"
	go install "honnef.co/go/tools/cmd/staticcheck@v$staticcheck_version"
fi
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -r /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
# The compose test runs where a Docker engine answers; it needs either the
# compose plugin or the standalone docker-compose.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 &&
	! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
	need+=(docker-compose)
fi
# Network fault tests (network namespaces + nftables) run only as root.
if [ "$(id -u)" -eq 0 ]; then
	command -v nft >/dev/null 2>&1 || need+=(nftables)
	command -v ip >/dev/null 2>&1 || need+=(iproute2)
fi
apt_install
# helm lints and renders the chart (scripts/deploy/helm_test.go).
helm_version=v3.22.0
if ! go version -m "$(go env GOPATH)/bin/helm" 2>/dev/null | grep -qE "^\smod\s+helm.sh/helm/v3\s+$helm_version\s"; then
	echo "installing: helm $helm_version (go install)"
	go install "helm.sh/helm/v3/cmd/helm@$helm_version"
fi
