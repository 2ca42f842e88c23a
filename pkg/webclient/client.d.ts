// Type declarations for ringcast's browser client, served at /client.js.

/** The client's link state. `connected` means welcomed by a node. */
export type State = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** A point in a channel's history. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface Options {
  /** 1–128 characters of [A-Za-z0-9_.:@-]; required. */
  clientId: string;
  /** A static token, sent as the token query parameter when auth is on. */
  token?: string;
  /**
   * Returns a token (a JWT whose sub is clientId). Called before each
   * (re)connect and shortly before the current token's exp, so the page
   * never sees a 4001 while it can still mint tokens. A rejection (or no
   * answer within connectTimeoutMs) counts as a failed connect and is
   * retried with backoff.
   */
  getToken?: () => Promise<string> | string;
  /** Connect right after construction (default true). */
  autoConnect?: boolean;
  /** A handshake plus welcome taking longer is abandoned (default 5000). */
  connectTimeoutMs?: number;
  /** Least ceiling of a retry's random delay, which is half the outage so far (default 100). */
  minBackoffMs?: number;
  /** Ceiling of every retry's random delay, reached after a 40 s outage (default 20000). */
  maxBackoffMs?: number;
  /** Ping interval; 0 takes the welcome's heartbeat_ms (default 0). */
  heartbeatMs?: number;
  /** publish/send reject with code 'timeout' after this (default 10000). */
  requestTimeoutMs?: number;
  /** Where positions are kept: undefined = sessionStorage, null = memory only. */
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null;
}

/** The welcome frame. */
export interface Welcome {
  op: 'welcome';
  client_id: string;
  node: string;
  ring_epoch: number;
  heartbeat_ms: number;
}

/** A subscribed frame: the server confirmed a subscription. */
export interface Subscribed {
  op: 'subscribed';
  channel: string;
  /** Present whenever the subscribe carried a position: false means a gap was not filled. */
  recovered?: boolean;
  /** With history on: the channel's epoch and last offset. */
  epoch?: string;
  offset?: number;
}

/** A channel message. */
export interface Message<T = unknown> {
  channel: string;
  data: T;
  /** The publisher's client id; absent when published over HTTP. */
  from?: string;
  /** With history on. */
  offset?: number;
  epoch?: string;
}

/** A direct message. */
export interface Direct<T = unknown> {
  /** The sender's client id; absent when sent over HTTP. */
  from?: string;
  data: T;
}

/** A reconnect request from the server; the client follows it by itself. */
export interface ReconnectRequest {
  reason: 'rebalance' | 'drain' | 'overload' | string;
  after_ms: number;
}

/** Errors carry a short snake_case code: a server error code, or one of
 * 'not_connected', 'disconnected', 'timeout', 'closed', 'bad_frame', 'no_token'.
 * A token that does not allow a subscribe, publish or send gives 'forbidden';
 * a refused refresh 'unauthorized'. */
export interface RingcastError extends Error {
  code: string;
  /** Set when a subscribe was refused. */
  channel?: string;
}

export interface StateInfo {
  /** Why the link went down, for 'disconnected'. */
  reason?: string;
}

export interface Events {
  state: (state: State, info: StateInfo) => void;
  welcome: (w: Welcome) => void;
  subscribed: (s: Subscribed) => void;
  /** Every delivered channel message, after duplicate removal. */
  message: (m: Message) => void;
  direct: (m: Direct) => void;
  reconnect: (r: ReconnectRequest) => void;
  /** Server errors that answer no publish or send (e.g. a forbidden subscribe), failed automatic refreshes, and malformed frames. */
  error: (e: RingcastError) => void;
}

export interface Subscription {
  readonly channel: string;
  /** Stops delivery to this handler; the last handler of a channel unsubscribes it. */
  unsubscribe(): void;
}

export class RingcastClient {
  /** url: ws(s)://host/ws (http(s) and relative URLs are accepted). Throws TypeError on a bad url or clientId. */
  constructor(url: string, opts: Options);

  readonly clientId: string;
  readonly state: State;
  /** The node of the last welcome, or null before the first. */
  readonly node: string | null;
  readonly ringEpoch: number | null;
  readonly heartbeatMs: number;
  /** Welcomes after the first. */
  readonly reconnects: number;
  readonly channels: string[];
  /** This tab's session (sessionStorage): kept across reloads, a new one after close code 4010. */
  readonly session: string;

  /** The last delivered position in channel, or null. */
  position(channel: string): Position | null;

  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof Events>(event: E, fn: Events[E]): () => void;

  /**
   * Subscribes fn to channel; the subscription survives reconnects and page
   * reloads (positions are kept in sessionStorage), and messages already
   * delivered are not delivered again. Throws TypeError on a bad channel name.
   */
  subscribe<T = unknown>(channel: string, fn: (m: Message<T>) => void): Subscription;

  /** Resolves on the server's ack; rejects with a RingcastError. */
  publish(channel: string, data: unknown): Promise<void>;

  /** Sends to the client with id `to`, wherever it is connected. */
  send(to: string, data: unknown): Promise<void>;

  /**
   * Replaces the connection's token without reconnecting (token, or one
   * from getToken). Resolves with the new exp in seconds (absent when the
   * token has none); rejects with code 'unauthorized' when refused, and the
   * old token stays in force until its own exp. Called by itself before exp
   * when getToken is set.
   */
  refresh(token?: string): Promise<{ exp?: number }>;

  /** Connects now; a no-op while a socket is open or opening. */
  connect(): void;

  /** Closes the link and stops reconnecting. */
  close(): void;
}
