#!/usr/bin/env bash
# Installs the peers the comparison benchmarks run next to ringcast when they
# are missing: nginx-light, haproxy and wrk (Debian packages). `make test`
# neither runs this nor needs it. Safe to run repeatedly.
set -euo pipefail
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
