#!/usr/bin/env bash
# Starts a local ringcast cluster: one balancer on 127.0.0.1:8080 and three
# nodes, each a separate process with labelled logs. Ctrl-C stops them all.
# Environment: NODES (default 3), BRIDGE (default mesh), DETECT (default fast),
# HISTORY_SIZE (default 0), BALANCER_ADDR (default 127.0.0.1:8080),
# AUTH=1 (tokens and an API key required: prints a token and a demo URL;
# the secret is RINGCAST_TOKEN_HMAC_SECRET, or a random one).
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${NODES:-3}
bridge=${BRIDGE:-mesh}
detect=${DETECT:-fast}
history=${HISTORY_SIZE:-0}
addr=${BALANCER_ADDR:-127.0.0.1:8080}

if [ "${AUTH:-0}" = 1 ]; then
	# Both binaries read these (flag → RINGCAST_<FLAG>): one secret for all.
	export RINGCAST_TOKEN_HMAC_SECRET=${RINGCAST_TOKEN_HMAC_SECRET:-$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')}
	export RINGCAST_API_KEY=${RINGCAST_API_KEY:-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')}
	token=$(go run ./scripts/token -sub alice -channels 'lobby,room:*,user:{sub}' -exp 8h)
fi

pids=()
stop() {
	trap - INT TERM EXIT
	echo "stopping cluster..."
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait
	exit 0
}
# label prefixes each line of a process's output; it ignores Ctrl-C so the
# shutdown logs still show.
label() { (trap '' INT; sed -u "s/^/[$1] /"); }
trap stop INT TERM EXIT

bin/balancer -addr "$addr" -gossip 127.0.0.1:7000 -detect "$detect" > >(label balancer) 2>&1 &
pids+=($!)
for i in $(seq 1 "$nodes"); do
	bin/node -id "n$i" -addr "127.0.0.1:$((9000 + i))" -gossip "127.0.0.1:$((7000 + i))" \
		-join 127.0.0.1:7000 -bridge "$bridge" -detect "$detect" -history-size "$history" \
		> >(label "n$i") 2>&1 &
	pids+=($!)
done
echo "ringcast: balancer http://$addr  (ws://$addr/ws?client_id=alice); nodes n1..n$nodes on 127.0.0.1:9001.. — Ctrl-C stops all"
if [ -n "${token:-}" ]; then
	echo "auth on: token for alice (8 h, channels lobby, room:*, user:alice):"
	echo "  $token"
	echo "demo:    http://$addr/?client_id=alice&token=$token"
	echo "more:    go run ./scripts/token -sub bob -channels 'room:*' -exp 1h   (RINGCAST_TOKEN_HMAC_SECRET=$RINGCAST_TOKEN_HMAC_SECRET)"
	echo "publish: curl -H 'Authorization: Bearer $RINGCAST_API_KEY' -d '{\"channel\":\"lobby\",\"data\":1}' http://$addr/v1/publish"
fi
wait
