package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ringcast/ringcast/pkg/bridge"
	"github.com/ringcast/ringcast/pkg/wire"
)

// A channel with history has four keys, all expiring HistoryTTL after its
// last publish: KEYS[1] a stream of its messages (field o = offset, m = the
// message JSON without offset and epoch), KEYS[2] the last offset, KEYS[3]
// the epoch, and KEYS[4] a mark naming the primary that writes them (its
// cluster node id; "1" outside a cluster). The mark is set without
// replication, so a replica never has it.
//
// The epoch is valid only while the offset key and this primary's mark
// exist. When a key is gone, history was lost (a restart, an expiry); when
// the mark is missing (or "-"), this server is a promoted replica that may
// lack the last messages its old primary published and delivered. Either
// way a new epoch starts from offset 0, so a lost message never goes
// unnoticed. (A planned failover starts a new epoch too.)
//
// A slot migration copies the keys, the mark too, to the new primary and to
// its replicas. There the mark names another node: the first script run
// adopts the keys, replacing the replicas' copy with "-" (replicated) and
// its own with this node's id (not replicated), and publishes nothing.
// Publishes then keep the epoch; a replica that missed one of them has "-"
// and starts a new epoch when promoted. The stream is emptied, never
// deleted, and the mark is overwritten, never deleted: in a slot being
// migrated, a script may not touch a key that is missing.
const ensureEpoch = `
local function ensure(candidate, ttl, cluster)
  local me = '1'
  if cluster == '1' then me = redis.call('CLUSTER', 'MYID') end
  local epoch = redis.call('GET', KEYS[3])
  local mark = redis.call('GET', KEYS[4])
  if epoch and mark and mark ~= '-' and redis.call('EXISTS', KEYS[2]) == 1 then
    if mark == me then
      return epoch, false
    end
    redis.call('SET', KEYS[4], '-', 'PX', ttl)
    redis.set_repl(redis.REPL_NONE)
    redis.call('SET', KEYS[4], me, 'PX', ttl)
    redis.set_repl(redis.REPL_ALL)
    return epoch, true
  end
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
  end
  redis.call('SET', KEYS[2], 0, 'PX', ttl)
  redis.call('SET', KEYS[3], candidate, 'PX', ttl)
  redis.set_repl(redis.REPL_NONE)
  redis.call('SET', KEYS[4], me, 'PX', ttl)
  redis.set_repl(redis.REPL_ALL)
  return candidate, false
end
`

// publishScript appends a message and publishes it with its offset and
// epoch. ARGV: message JSON, candidate epoch, ttl ms, history size, pub/sub
// channel, publish command (PUBLISH, or SPUBLISH on a cluster), "1" on a
// cluster. Returns {offset, epoch}, or {0, epoch} when it only adopted
// migrated keys: the caller runs it again.
var publishScript = goredis.NewScript(ensureEpoch + `
local ttl = ARGV[3]
local epoch, adopted = ensure(ARGV[2], ttl, ARGV[7])
if adopted then
  return {0, epoch}
end
local off = redis.call('INCR', KEYS[2])
local body = ARGV[1]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'o', off, 'm', body)
redis.call(ARGV[6], ARGV[5], string.sub(body, 1, -2) .. string.format(',"offset":%d,"epoch":"%s"}', off, epoch))
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {off, epoch}
`)

// historyScript returns {epoch, top offset, server time ms, entries}, the
// entries being the last n = top - since offset stream entries, newest
// first, when the since epoch is current and 0 < n <= max. ARGV: candidate
// epoch, ttl ms, since epoch, since offset, max, "1" on a cluster.
var historyScript = goredis.NewScript(ensureEpoch + `
local epoch = ensure(ARGV[1], ARGV[2], ARGV[6])
local top = tonumber(redis.call('GET', KEYS[2]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = top - tonumber(ARGV[4])
if ARGV[3] ~= epoch or n <= 0 or n > tonumber(ARGV[5]) then
  return {epoch, top, now, {}}
end
return {epoch, top, now, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)}
`)

func (b *Bridge) historyKeys(channel string) []string {
	k := b.cfg.Prefix + "{" + channel + "}:"
	if b.parts > 0 {
		k = b.cfg.Prefix + b.tag(b.partition(channel)) + "h:" + channel + ":"
	}
	return []string{k + "stream", k + "offset", k + "epoch", k + "mark"}
}

// clusterArg tells the scripts whether they run on a cluster.
func (b *Bridge) clusterArg() string {
	if b.cluster != nil {
		return "1"
	}
	return "0"
}

// newEpoch returns a candidate epoch; the scripts keep it only when the
// channel has none.
func newEpoch() string { return strconv.FormatUint(rand.Uint64(), 36) }

// History implements bridge.Bridge. Messages are returned only when
// recovered: the since epoch is current and every offset after since is
// still kept, none older than HistoryTTL. Otherwise recovered is false and
// msgs is empty.
func (b *Bridge) History(ctx context.Context, channel string, since *wire.Position) ([]bridge.Message, wire.Position, bool, error) {
	if b.cfg.HistorySize == 0 {
		return nil, wire.Position{}, false, nil
	}
	var sinceEpoch string
	var sinceOffset uint64
	if since != nil {
		sinceEpoch, sinceOffset = since.Epoch, since.Offset
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpTimeout)
	defer cancel()
	res, err := historyScript.Run(ctx, b.client, b.historyKeys(channel),
		newEpoch(), b.cfg.HistoryTTL.Milliseconds(), sinceEpoch, sinceOffset, b.cfg.HistorySize, b.clusterArg()).Slice()
	if err != nil {
		return nil, wire.Position{}, false, fmt.Errorf("%w: history of %s: %w", bridge.ErrUnavailable, channel, err)
	}
	top, now, entries, err := parseHistory(res)
	if err != nil {
		return nil, wire.Position{}, false, fmt.Errorf("history of %s: %w", channel, err)
	}
	if since == nil || since.Epoch != top.Epoch || since.Offset > top.Offset {
		return nil, top, false, nil
	}
	n := top.Offset - since.Offset
	if uint64(len(entries)) != n {
		return nil, top, false, nil
	}
	msgs := make([]bridge.Message, n)
	for i, e := range entries {
		// newest first: entries[i] must hold offset top-i
		m, ms, err := parseEntry(e)
		if err != nil {
			return nil, wire.Position{}, false, fmt.Errorf("history of %s: %w", channel, err)
		}
		if m.Offset != top.Offset-uint64(i) || ms < now-b.cfg.HistoryTTL.Milliseconds() {
			return nil, top, false, nil
		}
		m.Epoch = top.Epoch
		msgs[int(n)-1-i] = m
	}
	return msgs, top, true, nil
}

func parseHistory(res []any) (top wire.Position, now int64, entries []any, err error) {
	if len(res) != 4 {
		return top, 0, nil, fmt.Errorf("history reply has %d elements, want 4", len(res))
	}
	epoch, ok1 := res[0].(string)
	off, ok2 := res[1].(int64)
	now, ok3 := res[2].(int64)
	entries, ok4 := res[3].([]any)
	if !ok1 || !ok2 || !ok3 || !ok4 || off < 0 {
		return top, 0, nil, fmt.Errorf("malformed history reply %v", res)
	}
	return wire.Position{Epoch: epoch, Offset: uint64(off)}, now, entries, nil
}

// parseEntry decodes one stream entry [id, [field, value, ...]] and returns
// its message with the offset set, and its time in ms.
func parseEntry(e any) (bridge.Message, int64, error) {
	var m bridge.Message
	pair, _ := e.([]any)
	if len(pair) != 2 {
		return m, 0, fmt.Errorf("malformed stream entry %v", e)
	}
	id, _ := pair[0].(string)
	fields, _ := pair[1].([]any)
	msPart, _, _ := strings.Cut(id, "-")
	ms, err := strconv.ParseInt(msPart, 10, 64)
	if err != nil {
		return m, 0, fmt.Errorf("stream entry id %q: %w", id, err)
	}
	var off, body string
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		switch k {
		case "o":
			off = v
		case "m":
			body = v
		}
	}
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		return m, 0, fmt.Errorf("stream entry %s: %w", id, err)
	}
	if m.Offset, err = strconv.ParseUint(off, 10, 64); err != nil {
		return m, 0, fmt.Errorf("stream entry %s offset: %w", id, err)
	}
	return m, ms, nil
}
