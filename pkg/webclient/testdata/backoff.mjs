// Runs client.js under node against a fake WebSocket: the server is gone
// for OUTAGE_MS (every connect fails at once), then welcomes. Prints, as
// JSON, the attempts per client and when each was welcomed (ms after the
// outage began).
const OUTAGE_MS = Number(process.argv[3]);
const CLIENTS = Number(process.argv[4]);
const start = Date.now();
let attempts = 0;
globalThis.WebSocket = class {
  constructor() {
    attempts++;
    this.readyState = 0;
    const up = Date.now() - start >= OUTAGE_MS;
    setTimeout(() => {
      if (!up) {
        this.onclose?.({ code: 1006, reason: '' });
        return;
      }
      this.readyState = 1;
      this.onopen?.();
      this.onmessage?.({ data: JSON.stringify({ op: 'welcome', client_id: 'x', node: 'n1', ring_epoch: 1, heartbeat_ms: 60000 }) });
    }, 1);
  }
  send() {}
  close() {}
};
const { RingcastClient } = await import(process.argv[2]);
const back = [];
const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const c = new RingcastClient('ws://127.0.0.1:1/ws', { clientId: `c${i}`, storage: null });
  c.on('welcome', () => {
    back.push(Date.now() - start);
    if (back.length === CLIENTS) {
      for (const c of clients) c.close();
      console.log(JSON.stringify({ attempts, back }));
    }
  });
  clients.push(c);
}
