#!/usr/bin/env bash
# Builds the ringcast image without any registry: static binaries
# (CGO_ENABLED=0) copied into a FROM scratch image with the CA bundle.
#   scripts/deploy/image.sh [tag]        # default ringcast:latest
# Environment: GOOS/GOARCH (default the host's), GO (default go).
set -euo pipefail
tag=${1:-ringcast:latest}
root=$(cd "$(dirname "$0")/../.." && pwd)
ctx=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cd "$root"
for b in balancer node; do
	CGO_ENABLED=0 GOOS=${GOOS:-linux} "${GO:-go}" build -trimpath -ldflags='-s -w' -o "$ctx/$b" "./$b"
done
ca=/etc/ssl/certs/ca-certificates.crt
if [ ! -r "$ca" ]; then
	echo "image: $ca missing (apt-get install ca-certificates)" >&2
	exit 1
fi
cp "$ca" "$ctx/"
# The classic builder is enough for a FROM scratch image, and it is the one
# every Docker engine has (BuildKit's buildx plugin may be absent).
if ! out=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -q -f scripts/deploy/Dockerfile -t "$tag" "$ctx" 2>&1); then
	echo "$out" >&2
	exit 1
fi
echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
