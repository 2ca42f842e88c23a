#!/usr/bin/env bash
# Publish→deliver through the Redis bridge next to redis-benchmark's own
# PUBLISH rate (-P 16), on the same machine in the same run.
#   scripts/bench-redis.sh            (needs redis-server and redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
	echo "needs redis-server and redis-benchmark: scripts/install-test-deps.sh" >&2
	exit 1
}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

redis-cli -p "$port" subscribe ringcast-bench >/dev/null &
sub=$!
trap 'kill $sub $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
msg=0123456789abcdef0123456789abcdef
echo "== redis-benchmark PUBLISH, 32-byte payload, one redis-cli subscriber, $(nproc) cores"
for p in 16 1; do
	echo -n "-P $p: "
	redis-benchmark -p "$port" -P "$p" -n 300000 -q PUBLISH ringcast-bench "$msg" | tr '\r' '\n' | grep -i publish | tail -1
done
echo
echo "== ringcast Redis bridge: publish on node A → delivered on node B (go test -bench BenchmarkPublishDeliver)"
go test -run '^$' -bench BenchmarkPublishDeliver -benchtime 3s ./pkg/bridge/redis/ | grep -E '^Benchmark|msgs/s'
