#!/usr/bin/env bash
# Installs what the tests need when it is missing: staticcheck (go install of
# an exact version, for make lint), redis-server, chromium and, as root,
# nftables and iproute2 (Debian packages). Safe to run repeatedly; does
# nothing when all is there.
set -euo pipefail
staticcheck_version=0.8.2
staticcheck="$(go env GOPATH)/bin/staticcheck"
if ! "$staticcheck" -version 2>/dev/null | grep -qF "($staticcheck_version)"; then
	echo "installing: staticcheck v$staticcheck_version"
	go install "honnef.co/go/tools/cmd/staticcheck@v$staticcheck_version"
fi
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Network fault tests (network namespaces + nftables) run only as root.
if [ "$(id -u)" -eq 0 ]; then
	command -v nft >/dev/null 2>&1 || need+=(nftables)
	command -v ip >/dev/null 2>&1 || need+=(iproute2)
fi
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
