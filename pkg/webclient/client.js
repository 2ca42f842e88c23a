// ringcast browser client: one WebSocket to the balancer, kept alive across
// node failures, rebalances and page reloads. Protocol v1, no dependencies.
//
//   import { RingcastClient } from '/client.js';
//   const c = new RingcastClient('ws://host:8080/ws', { clientId: 'alice' });
//   c.on('state', s => console.log(s));
//   const sub = c.subscribe('room', m => console.log(m.data));
//   await c.publish('room', { text: 'hi' });

const NAME = /^[A-Za-z0-9_.:@-]{1,128}$/;

// Every close goes through the backoff; only a reconnect frame (the server
// pacing a move) brings the client back at once. 4010 means another
// connection took this tab's session (a duplicated tab copies
// sessionStorage): this tab picks a new session before it reconnects.
const CLOSE_REPLACED = 4010;

// A link must stay up this long for the backoff to start over; links that
// fail right after their welcome keep backing off.
const STABLE_MS = 3000;

const DEFAULTS = {
  clientId: undefined,
  token: undefined, // a static token, sent as ?token=
  getToken: undefined, // async () => token: called before each (re)connect and shortly before the token's exp
  autoConnect: true, // connect right after construction (in a microtask, so listeners added synchronously see every state)
  connectTimeoutMs: 5000, // handshake + welcome; a hung connect is abandoned after this
  minBackoffMs: 100, // least ceiling of a retry's random delay (half the outage so far); lower reconnects faster but piles onto a struggling cluster
  maxBackoffMs: 20000, // ceiling of every retry's random delay (reached after a 40 s outage)
  heartbeatMs: 0, // 0: the welcome's heartbeat_ms; the link is dead after 2x with no frame
  requestTimeoutMs: 10000, // publish/send reject after this; the outcome is then unknown
  storage: undefined, // where positions are kept: undefined = sessionStorage, null = memory only
};

function fail(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled by the browser
  }
}

// tokenExp reads a JWT's exp (ms since the epoch) without verifying it, to
// know when to ask for the next one; 0 when there is none.
function tokenExp(token) {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(p.padEnd(p.length + ((4 - (p.length % 4)) % 4), '='))).exp;
    return typeof exp === 'number' && exp > 0 ? exp * 1000 : 0;
  } catch {
    return 0;
  }
}

function newSession() {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function report(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else console.error(err);
}

export class RingcastClient {
  #opts;
  #url;
  #storage;
  #listeners = new Map(); // event → Set of functions
  #subs = new Map(); // channel → {handlers, pos}
  #pending = new Map(); // request id → {resolve, reject, timer}
  #subRequests = new Map(); // subscribe request id → channel, until its reply
  #lastId = 0;

  #ws = null; // the current socket, connecting or open
  #opening = 0; // generation of an open waiting for getToken; 0 = none
  #openGen = 0;
  #token; // the token of the current socket
  #session;
  #refreshTimer;
  #welcomed = false;
  #state = 'disconnected';
  #attempt = 0; // attempts since the last stable link
  #lostAt = 0; // when the current outage began (Date.now()); 0 while a link holds
  #retryTimer;
  #connectTimer;
  #moveTimer;
  #heartbeatTimer;
  #lastRx = 0;
  #lastPing = 0;
  #lastTick = 0;
  #welcomedAt = 0;

  #node = null;
  #ringEpoch = null;
  #heartbeat = 0;
  #welcomes = 0;

  /**
   * @param {string} url ws(s)://host/ws; http(s) and relative URLs are accepted too
   * @param {object} opts see DEFAULTS; clientId is required
   */
  constructor(url, opts = {}) {
    this.#opts = { ...DEFAULTS, ...opts };
    const id = this.#opts.clientId;
    if (typeof id !== 'string' || !NAME.test(id)) {
      throw new TypeError(`ringcast: clientId must be 1-128 characters of [A-Za-z0-9_.:@-], got ${JSON.stringify(id)}`);
    }
    const u = new URL(url, globalThis.location?.href);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`ringcast: url ${url}: want ws:// or wss://`);
    u.searchParams.set('client_id', id);
    this.#url = u.toString();
    this.#storage = opts.storage === undefined ? defaultStorage() : opts.storage;
    this.#session = this.#loadSession();
    if (this.#opts.autoConnect) queueMicrotask(() => this.#state === 'disconnected' && this.connect());
  }

  get clientId() { return this.#opts.clientId; }
  /** 'connecting' | 'connected' | 'disconnected' | 'closed' */
  get state() { return this.#state; }
  /** The node of the last welcome, or null before the first. */
  get node() { return this.#node; }
  get ringEpoch() { return this.#ringEpoch; }
  get heartbeatMs() { return this.#heartbeat; }
  /** How many times the client was welcomed again after its first welcome. */
  get reconnects() { return Math.max(this.#welcomes - 1, 0); }
  get channels() { return [...this.#subs.keys()]; }
  /** This tab's session: kept across reloads, a new one after 4010. */
  get session() { return this.#session; }

  /** The last delivered position in channel, {epoch, offset}, or null. */
  position(channel) {
    const p = this.#subs.get(channel)?.pos;
    return p ? { ...p } : null;
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    const entry = (...a) => fn(...a);
    this.#listeners.get(event).add(entry);
    return () => this.#listeners.get(event)?.delete(entry);
  }

  /** Connects now: a no-op while a socket is open or opening; cancels a pending retry. */
  connect() {
    if (this.#ws || this.#opening) return;
    this.#open();
  }

  /** Closes the link and stops reconnecting; connect() starts again. */
  close() {
    if (this.#state === 'closed') return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#opening = 0;
    this.#drop();
    this.#failPending('closed', 'client closed');
    this.#setState('closed');
  }

  /**
   * Replaces the connection's token without reconnecting: token, or a new
   * one from getToken. Resolves with {exp} (seconds; absent when the token
   * has none); rejects with code 'unauthorized' when the server refuses it
   * (the old token stays in force until its own exp).
   */
  async refresh(token) {
    const t = token ?? (await this.#opts.getToken?.());
    if (!t) throw fail('no_token', 'refresh: no token and no getToken');
    const f = await this.#request({ op: 'refresh', token: t });
    this.#token = t;
    this.#armRefresh(typeof f?.exp === 'number' ? f.exp * 1000 : 0);
    return { exp: f?.exp };
  }

  /**
   * Subscribes fn to channel. The subscription survives reconnects: after
   * every welcome it is renewed from the last delivered {epoch, offset}, so no
   * message is lost where history is on, and none is delivered twice.
   */
  subscribe(channel, fn) {
    if (typeof channel !== 'string' || !NAME.test(channel)) {
      throw new TypeError(`ringcast: channel must be 1-128 characters of [A-Za-z0-9_.:@-], got ${JSON.stringify(channel)}`);
    }
    if (typeof fn !== 'function') throw new TypeError('ringcast: subscribe needs a handler');
    let s = this.#subs.get(channel);
    if (!s) {
      s = { handlers: new Set(), pos: this.#loadPos(channel) };
      this.#subs.set(channel, s);
      if (this.#welcomed) this.#sendSubscribe(channel, s);
    }
    const h = (m) => fn(m); // one entry per call, so the same fn may subscribe twice
    s.handlers.add(h);
    return {
      channel,
      unsubscribe: () => {
        if (!s.handlers.delete(h) || s.handlers.size > 0 || this.#subs.get(channel) !== s) return;
        this.#subs.delete(channel);
        this.#savePos(channel, null);
        if (this.#welcomed) this.#send({ op: 'unsubscribe', channel });
      },
    };
  }

  /** Publishes data to channel; resolves on the server's ack. */
  publish(channel, data) {
    return this.#request({ op: 'publish', channel, data: data ?? null }).then(() => undefined);
  }

  /** Sends data to the client with id to, wherever it is connected; resolves on the ack. */
  send(to, data) {
    return this.#request({ op: 'send', to, data: data ?? null }).then(() => undefined);
  }

  #request(frame) {
    if (!this.#welcomed) return Promise.reject(fail('not_connected', `${frame.op}: not connected`));
    const id = ++this.#lastId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(fail('timeout', `${frame.op}: no reply within ${this.#opts.requestTimeoutMs} ms`));
      }, this.#opts.requestTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#send({ ...frame, id });
    });
  }

  async #open() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#setState('connecting');
    let token = this.#token ?? this.#opts.token; // the last one refresh() gave, else the option
    if (this.#opts.getToken) {
      const gen = (this.#opening = ++this.#openGen);
      let timer;
      try {
        token = await Promise.race([
          this.#opts.getToken(),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no token within ${this.#opts.connectTimeoutMs} ms`)), this.#opts.connectTimeoutMs);
          }),
        ]);
      } catch (e) {
        if (this.#opening !== gen) return; // closed meanwhile
        this.#opening = 0;
        this.#lost(`getToken: ${e?.message ?? e}`);
        return;
      } finally {
        clearTimeout(timer);
      }
      if (this.#opening !== gen) return;
      this.#opening = 0;
    }
    this.#token = token;
    const u = new URL(this.#url);
    u.searchParams.set('session', this.#session);
    if (token) u.searchParams.set('token', token);
    let ws;
    try {
      ws = new WebSocket(u.toString());
    } catch (e) {
      this.#lost(`connect: ${e.message}`);
      return;
    }
    this.#ws = ws;
    this.#connectTimer = setTimeout(() => this.#lost('connect timeout'), this.#opts.connectTimeoutMs);
    ws.onmessage = (ev) => this.#onFrame(ev.data);
    ws.onclose = (ev) => {
      if (ev.code === CLOSE_REPLACED) this.#renewSession();
      this.#lost(`closed ${ev.code}${ev.reason ? ` (${ev.reason})` : ''}`);
    };
    ws.onerror = () => {}; // onclose follows with the code
  }

  // #drop forgets the current socket without waiting for it: a socket on a
  // blackholed path may take seconds to report its close, or never does.
  #drop() {
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#moveTimer);
    clearInterval(this.#heartbeatTimer);
    clearTimeout(this.#refreshTimer);
    this.#moveTimer = undefined;
    this.#subRequests.clear();
    const ws = this.#ws;
    this.#ws = null;
    this.#welcomed = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
  }

  // #lost ends the link and schedules the next attempt: at once when the
  // server asked for it (unless the previous attempt failed too), else after
  // a full-jitter backoff whose ceiling is half the outage so far (between
  // minBackoffMs and maxBackoffMs): a short outage costs a short wait, a
  // long one is retried gently. A browser cannot read the status of a
  // refused handshake (a 503 with Retry-After from an overloaded balancer
  // looks like any failed connect), so the jitter alone spreads the retries.
  #lost(reason, now = false) {
    if (this.#welcomed && Date.now() - this.#welcomedAt >= STABLE_MS) {
      this.#attempt = 0;
      this.#lostAt = 0;
    }
    if (!this.#lostAt) this.#lostAt = Date.now();
    this.#drop();
    this.#failPending('disconnected', `link lost: ${reason}`);
    this.#setState('disconnected', { reason });
    if (this.#state !== 'disconnected') return; // a listener closed or reconnected
    const outage = Date.now() - this.#lostAt;
    const ceil = Math.min(this.#opts.maxBackoffMs, Math.max(this.#opts.minBackoffMs, outage / 2));
    this.#attempt++;
    this.#retryTimer = setTimeout(() => this.#open(), now && this.#attempt === 1 ? 0 : Math.random() * ceil);
  }

  #failPending(code, message) {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(fail(code, message));
      this.#pending.delete(id);
    }
  }

  #onFrame(data) {
    this.#lastRx = Date.now();
    if (typeof data !== 'string') return; // the protocol speaks text frames only
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this.#emit('error', fail('bad_frame', 'malformed frame from server'));
      return;
    }
    if (!f || typeof f.op !== 'string') return;
    if (!this.#welcomed) {
      if (f.op === 'welcome') this.#onWelcome(f);
      else this.#lost(`first frame is ${f.op}, want welcome`);
      return;
    }
    switch (f.op) {
      case 'message':
        this.#deliver(f);
        break;
      case 'subscribed':
        this.#onSubscribed(f);
        break;
      case 'direct':
        this.#emit('direct', { from: f.from, data: f.data });
        break;
      case 'ack':
      case 'refreshed':
      case 'error':
        this.#onReply(f);
        break;
      case 'reconnect': {
        const after = Math.max(0, Number(f.after_ms) || 0);
        this.#emit('reconnect', { reason: f.reason, after_ms: after });
        if (this.#ws && !this.#moveTimer) {
          this.#moveTimer = setTimeout(() => {
            this.#attempt = 0; // the server paced this move: follow it at once
            this.#lostAt = 0;
            this.#lost(`server asked: ${f.reason}`, true);
          }, after);
        }
        break;
      }
      // pong and unsubscribed need nothing beyond proving the link alive.
    }
  }

  #onWelcome(f) {
    const ws = this.#ws;
    clearTimeout(this.#connectTimer);
    this.#welcomed = true;
    this.#welcomes++;
    this.#node = f.node ?? null;
    this.#ringEpoch = f.ring_epoch ?? null;
    this.#heartbeat = this.#opts.heartbeatMs || f.heartbeat_ms || 10000;
    this.#welcomedAt = this.#lastPing = this.#lastTick = Date.now();
    this.#heartbeatTimer = setInterval(() => this.#tick(), this.#heartbeat / 4);
    for (const [channel, s] of this.#subs) this.#sendSubscribe(channel, s);
    this.#armRefresh(tokenExp(this.#token ?? ''));
    this.#emit('welcome', f);
    if (this.#ws === ws) this.#setState('connected');
  }

  // #tick pings every heartbeat and declares the link dead after two
  // heartbeats without any frame.
  #tick() {
    const now = Date.now();
    const hb = this.#heartbeat;
    // A late tick means the timers were throttled (background tab, sleep):
    // give the link one more heartbeat to answer rather than blame it.
    if (now - this.#lastTick > hb) this.#lastRx = Math.max(this.#lastRx, now - hb);
    this.#lastTick = now;
    if (now - this.#lastRx >= 2 * hb) {
      this.#lost(`no frame for ${now - this.#lastRx} ms (heartbeat timeout)`);
      return;
    }
    if (now - this.#lastPing >= hb) {
      this.#lastPing = now;
      this.#send({ op: 'ping' });
    }
  }

  // #armRefresh asks getToken for the next token a fifth of the lifetime
  // (1-30 s) before expMs, so the page never sees a 4001 while its app can
  // still mint tokens. A failed refresh is reported; the 4001 at exp then
  // reconnects with a token from getToken.
  #armRefresh(expMs) {
    clearTimeout(this.#refreshTimer);
    if (!this.#opts.getToken || !expMs) return;
    const left = expMs - Date.now();
    const lead = Math.min(Math.max(left / 5, 1000), 30000);
    this.#refreshTimer = setTimeout(() => {
      this.refresh().catch((e) => {
        // A link that dropped meanwhile asks getToken again when it reconnects.
        if (e.code !== 'disconnected' && e.code !== 'not_connected') this.#emit('error', e);
      });
    }, Math.max(left - lead, 0));
  }

  #loadSession() {
    try {
      const s = this.#storage?.getItem(`ringcast:session:${this.#opts.clientId}`);
      if (s && NAME.test(s) && s.length <= 64) return s;
    } catch {
      // unreadable: a new one
    }
    return this.#renewSession();
  }

  #renewSession() {
    this.#session = newSession();
    try {
      this.#storage?.setItem(`ringcast:session:${this.#opts.clientId}`, this.#session);
    } catch {
      // storage full or disabled: the session lives as long as the page
    }
    return this.#session;
  }

  #sendSubscribe(channel, s) {
    const id = ++this.#lastId;
    this.#subRequests.set(id, channel);
    const frame = { op: 'subscribe', id, channel };
    if (s.pos) frame.since = { epoch: s.pos.epoch, offset: s.pos.offset };
    this.#send(frame);
  }

  #onSubscribed(f) {
    for (const [id, ch] of this.#subRequests) if (ch === f.channel) this.#subRequests.delete(id);
    const s = this.#subs.get(f.channel);
    if (s) s.resync = false;
    if (s && f.recovered !== true) {
      // Nothing to resume from (or the gap is lost): start from the channel's
      // current position.
      s.pos = typeof f.offset === 'number' ? { epoch: f.epoch ?? '', offset: f.offset } : null;
      this.#savePos(f.channel, s.pos);
    }
    this.#emit('subscribed', f);
  }

  // #deliver hands a message to its subscription's handlers, dropping ones
  // already delivered in the same epoch.
  #deliver(f) {
    const s = this.#subs.get(f.channel);
    if (!s) return;
    if (typeof f.offset === 'number') {
      const epoch = f.epoch ?? '';
      if (s.resync) return; // waiting for the resubscribe below to answer
      if (s.pos && s.pos.epoch === epoch && f.offset <= s.pos.offset) return;
      if (s.pos && (s.pos.epoch !== epoch || f.offset > s.pos.offset + 1)) {
        // A gap (or history was lost): never skip it silently. Subscribe
        // again from the last position; the reply recovers the gap or says
        // recovered:false, and what came meanwhile arrives through it.
        s.resync = true;
        this.#sendSubscribe(f.channel, s);
        return;
      }
      s.pos = { epoch, offset: f.offset };
      this.#savePos(f.channel, s.pos);
    }
    const m = { channel: f.channel, data: f.data, from: f.from, offset: f.offset, epoch: f.epoch };
    this.#emit('message', m);
    for (const h of [...s.handlers]) {
      try {
        h(m);
      } catch (e) {
        report(e);
      }
    }
  }

  #onReply(f) {
    const p = typeof f.id === 'number' ? this.#pending.get(f.id) : undefined;
    if (p) {
      this.#pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.op === 'error') p.reject(fail(f.code, f.message));
      else p.resolve(f);
      return;
    }
    if (f.op !== 'error') return; // a late ack
    const e = fail(f.code, f.message);
    const channel = this.#subRequests.get(f.id);
    if (channel !== undefined) {
      // The subscription stays recorded and is renewed after the next welcome.
      this.#subRequests.delete(f.id);
      e.channel = channel;
    }
    this.#emit('error', e);
  }

  #send(frame) {
    if (this.#ws?.readyState !== 1) return;
    this.#ws.send(JSON.stringify(frame));
  }

  #setState(state, info = {}) {
    if (state === this.#state) return;
    this.#state = state;
    this.#emit('state', state, info);
  }

  #emit(event, ...args) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        report(e);
      }
    }
  }

  #posKey(channel) {
    return `ringcast:pos:${this.#opts.clientId}:${channel}`;
  }

  #loadPos(channel) {
    try {
      const p = JSON.parse(this.#storage?.getItem(this.#posKey(channel)) ?? 'null');
      if (p && typeof p.epoch === 'string' && Number.isSafeInteger(p.offset) && p.offset >= 0) return p;
    } catch {
      // unreadable: start fresh
    }
    return null;
  }

  #savePos(channel, pos) {
    try {
      if (pos) this.#storage?.setItem(this.#posKey(channel), JSON.stringify(pos));
      else this.#storage?.removeItem(this.#posKey(channel));
    } catch {
      // storage full or disabled: positions live in memory only
    }
  }
}
