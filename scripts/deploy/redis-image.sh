#!/usr/bin/env bash
# Builds the Redis image docker-compose.yml runs (ringcast-redis:latest)
# without any registry: the host's redis-server and redis-cli (Debian:
# apt-get install redis-server) and the shared libraries ldd lists, FROM
# scratch. Where no redis-server is installed it tags the official
# redis:7-alpine instead (pulled from Docker Hub).
#   scripts/deploy/redis-image.sh [tag]     # default ringcast-redis:latest
set -euo pipefail
tag=${1:-ringcast-redis:latest}
if ! command -v redis-server >/dev/null 2>&1; then
	echo "redis-image: no local redis-server, using the official image" >&2
	docker pull -q redis:7-alpine >/dev/null
	docker tag redis:7-alpine "$tag"
	echo "$tag: redis:7-alpine"
	exit 0
fi
ctx=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-redis-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/data"
chmod 1777 "$ctx/rootfs/data"
for b in redis-server redis-cli; do
	src=$(command -v "$b") || { echo "redis-image: $b missing (apt-get install redis-tools)" >&2; exit 1; }
	# redis-server is a symlink to redis-check-rdb, which looks at argv[0]:
	# copy the file under the name it is run by.
	cp -L "$src" "$ctx/rootfs/usr/bin/$b"
	for lib in $(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
		mkdir -p "$ctx/rootfs$(dirname "$lib")"
		cp -L "$lib" "$ctx/rootfs$lib"
	done
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin
WORKDIR /data
USER 65532:65532
EXPOSE 6379
CMD ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
DOCKERFILE
if ! out=$(DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -q -t "$tag" "$ctx" 2>&1); then
	echo "$out" >&2
	exit 1
fi
echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
