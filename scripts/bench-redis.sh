#!/usr/bin/env bash
# Publish→deliver through the Redis bridge: next to redis-benchmark's own
# PUBLISH rate (-P 16), then one Redis against a 3-shard Redis Cluster with
# sharded pub/sub (SPUBLISH/SSUBSCRIBE), in interleaved rounds of the same run.
#   scripts/bench-redis.sh [rounds]   (default 3; needs redis-server, redis-cli, redis-benchmark)
# Each topology run publishes N messages from 64 publishers over 64 channels on
# node "pub" and counts deliveries on node "sub" (go test -bench BenchmarkTopology);
# the ratio column is cluster ÷ single of the same round.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
n=${BENCH_N:-60000}
for b in redis-server redis-cli redis-benchmark; do
	command -v "$b" >/dev/null || {
		echo "needs redis-server, redis-cli and redis-benchmark: scripts/install-test-deps.sh" >&2
		exit 1
	}
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

redis-cli -p "$port" subscribe ringcast-bench >/dev/null &
sub=$!
trap 'kill $sub $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
msg=0123456789abcdef0123456789abcdef
echo "== redis-benchmark PUBLISH, 32-byte payload, one redis-cli subscriber, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
for p in 16 1; do
	echo -n "-P $p: "
	redis-benchmark -p "$port" -P "$p" -n 300000 -q PUBLISH ringcast-bench "$msg" | tr '\r' '\n' | grep -i publish | tail -1
done
kill $sub $pid 2>/dev/null; wait $pid 2>/dev/null || true
trap - EXIT

bin=$(mktemp -d)/redis.test
trap 'rm -rf "$(dirname "$bin")"' EXIT
go test -c -o "$bin" ./pkg/bridge/redis/
run() { (cd pkg/bridge/redis && "$bin" -test.run '^$' -test.bench "$1" -test.benchtime "$2" 2>&1 | grep -E '^Benchmark' || true); }

echo
echo "== ringcast Redis bridge, one channel: publish on node A → delivered on node B (BenchmarkPublishDeliver)"
run 'BenchmarkPublishDeliver' 3s

echo
echo "== one Redis vs a 3-shard Redis Cluster (3 primaries, no replicas, 12 partitions, ${n} messages, 64 publishers, 64 channels), $rounds interleaved rounds"
printf '%-6s %-8s %-22s %12s %8s %8s %7s\n' round history topology msgs/s p50-ms p99-ms ratio
for r in $(seq "$rounds"); do
	for h in 0 100; do
		single=""
		for topo in "redis=single" "redis=cluster3"; do
			line=$(run "BenchmarkTopology/^${topo}\$/^history=${h}\$" "${n}x" | head -1)
			rate=$(awk '{for(i=1;i<=NF;i++) if($i=="msgs/s") print $(i-1)}' <<<"$line")
			p50=$(awk '{for(i=1;i<=NF;i++) if($i=="p50-ms") print $(i-1)}' <<<"$line")
			p99=$(awk '{for(i=1;i<=NF;i++) if($i=="p99-ms") print $(i-1)}' <<<"$line")
			ratio=""
			if [ -z "$single" ]; then single=$rate; else ratio=$(awk -v a="$rate" -v b="$single" 'BEGIN{ if (b > 0) printf "%.2f×", a/b }'); fi
			printf '%-6s %-8s %-22s %12s %8s %8s %7s\n' "$r" "$h" "${topo#redis=}" "$rate" "$p50" "$p99" "$ratio"
		done
	done
done
echo "(machine load at the end: $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores)"
