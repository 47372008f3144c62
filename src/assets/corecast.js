// corecast.js: the browser client of corecast (an ES module, no build step,
// no dependencies), served by every node at GET /corecast.js (CORS *, an
// ETag). Tested in headless Chromium (tests/browser_client.rs) and under
// Node.js (tests/node_client.rs; pass `WebSocket` from npm `ws` where Node
// has no global one).
//
//   import { Corecast } from "http://NODE:8080/corecast.js";
//   const c = new Corecast("ws://NODE:8080/ws", {
//     token: async () => (await fetch("/my-token")).text(), // or a string
//   });
//   c.on("push", (m) => console.log(m.id, m.pos, m.room, m.data)); // data: JSON, or ArrayBuffer
//   c.on("state", (s, why) => console.log(s, why));         // "connecting" | "open" | "closed"
//   c.on("resumed", (r) => r.recovered || refetchEverything()); // r = {recovered, missed}
//   c.connect();
//   c.join("news");   // kept and joined again after every reconnect
//   c.leave("news");
//   c.close();        // for good (state "closed")
//
// Options (defaults in DEFAULTS below): backoffBaseMs, backoffCapMs,
// pingIntervalMs, pongTimeoutMs, maxMessagesPerSec, ...; `WebSocket` for a
// runtime without a global one, e.g. Node.js before 22:
//   new Corecast(url, { token, WebSocket: (await import("ws")).default });
//
// What it does for you:
// - reconnects with exponential backoff and full jitter: the n-th retry in a
//   row waits a random time in [0, min(backoffCapMs, backoffBaseMs * 2^n));
// - resumes: it keeps the last `pos` it saw (pushes, binary headers,
//   `resumed`) and always connects with `since=pos` (`since=` with nothing
//   the very first time) and `rooms=` the rooms it joined, so the node joins
//   them and replays what was missed before anything live, then answers
//   `resumed` (recovered: false means the app must refetch its state);
// - never hands the same push id to on("push") twice (a bounded window of ids);
// - a binary push is two frames: {"type":"binary","id","pos","room"?} then
//   the raw bytes, delivered as m.data (an ArrayBuffer);
// - follows the server's close codes: 4001 (replaced by a newer tab), 4002
//   (disconnected by the server) and 4004 (invalid token) end it for good;
//   4003 (token expired) calls the token function again and reconnects
//   (with a string token there is nothing to refresh: it ends too);
//   anything else (1001 drain, 1013 slow consumer, a dropped network) retries;
// - notices a dead connection: when nothing arrived for pingIntervalMs it
//   sends {"type":"ping"} (the node answers {"type":"pong"}) and drops the
//   socket if nothing arrives within pongTimeoutMs (a half-open TCP
//   connection after a laptop sleep otherwise looks open for many minutes);
// - paces what it sends (joins, pings) to maxMessagesPerSec, below the node's
//   per-connection budget.

/** Close codes the node sends and this client acts on. */
export const CLOSE = Object.freeze({
  GOING_AWAY: 1001,
  SLOW_CONSUMER: 1013,
  REPLACED: 4001,
  DISCONNECTED: 4002,
  TOKEN_EXPIRED: 4003,
  TOKEN_INVALID: 4004,
});

/** Close codes after which the client stops for good. */
const FINAL_CODES = new Set([CLOSE.REPLACED, CLOSE.DISCONNECTED, CLOSE.TOKEN_INVALID]);

/** Code this client reports for a connection it dropped itself. */
const LOCAL_TIMEOUT = 4000;

const DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30000,
  /** A connection open this long counts as healthy: the backoff starts over. */
  stableAfterMs: 5000,
  connectTimeoutMs: 10000,
  pingIntervalMs: 20000,
  pongTimeoutMs: 10000,
  /** The node allows 20 client messages a second by default. */
  maxMessagesPerSec: 10,
  /** How many delivered push ids are remembered to drop duplicates. */
  seenIdsMax: 4096,
  /** Longest `rooms=` list put on the URL (the node reads 8 KiB of request head). */
  roomsParamBytesMax: 4096,
  /** A token expiring within this margin is refreshed before use. */
  tokenRefreshMarginMs: 5000,
});

export class Corecast {
  /**
   * @param {string} url  ws:// or wss:// URL of a node's /ws
   * @param {object} options  {token, WebSocket?, ...DEFAULTS}
   */
  constructor(url, options = {}) {
    if (options.token === undefined) throw new TypeError("corecast: options.token is required");
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.state = "closed";
    /** The last stream position seen (sent back as `since`). */
    this.pos = null;
    this.rooms = new Set();
    this._handlers = { push: [], state: [], resumed: [], error: [] };
    this._token = typeof options.token === "string" ? options.token : null;
    this._seen = new Set();
    this._seenOrder = [];
    this._ws = null;
    this._generation = 0; // bumps on every attempt; stale callbacks compare it
    this._attempt = 0; // failed attempts in a row
    this._timer = null; // backoff or connect-timeout timer
    this._live = null; // liveness timer
    this._outbox = [];
    this._sendTimer = null;
    this._sentAt = []; // send times within the last second
    this._lastHeard = 0;
    this._openedAt = 0;
    this._onWake = () => this._checkLiveness();
  }

  /** Adds a handler for "push", "state", "resumed" or "error"; returns a function that removes it. */
  on(event, fn) {
    const list = this._handlers[event];
    if (!list) throw new TypeError(`corecast: unknown event ${event}`);
    list.push(fn);
    return () => list.splice(list.indexOf(fn) >>> 0, 1);
  }

  /** Starts (or restarts after "closed") and keeps the connection up. */
  connect() {
    if (this.state !== "closed") return;
    if (typeof window !== "undefined") {
      window.addEventListener("online", this._onWake);
      document.addEventListener("visibilitychange", this._onWake);
    }
    this._attempt = 0;
    this._open();
  }

  /** Joins `room` now (if open) and after every reconnect. */
  join(room) {
    this.rooms.add(room);
    if (this.state === "open") this._send({ type: "join", room });
  }

  /** Leaves `room` and stops joining it again. */
  leave(room) {
    this.rooms.delete(room);
    if (this.state === "open") this._send({ type: "leave", room });
  }

  /** Closes for good (state "closed"); connect() starts again. */
  close() {
    this._stop(1000, "client close");
  }

  // ---- connection lifecycle ----

  async _open() {
    const generation = ++this._generation;
    this._openedAt = 0;
    this._setState("connecting");
    let token;
    try {
      token = await this._currentToken();
    } catch (error) {
      if (generation !== this._generation) return;
      this._emit("error", { code: "token", message: String(error) });
      this._retry();
      return;
    }
    if (generation !== this._generation) return;
    const ws = new this.WebSocket(this._connectUrl(token));
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._timer = setTimeout(() => this._drop(ws, "connect timeout"), this.options.connectTimeoutMs);
    ws.onopen = () => {
      if (ws !== this._ws) return;
      clearTimeout(this._timer);
      this._openedAt = this._lastHeard = Date.now();
      // Joins again first: a join() in a state handler then sends its own.
      for (const room of this.rooms) this._send({ type: "join", room });
      this._setState("open");
      this._armLiveness();
    };
    ws.onmessage = (event) => ws === this._ws && this._onMessage(event.data);
    ws.onclose = (event) => ws === this._ws && this._onClose(event.code, event.reason);
    ws.onerror = () => {}; // a close event always follows
  }

  /** The URL of the next attempt: token, `since` (empty at first) and the joined rooms. */
  _connectUrl(token) {
    let query = `token=${encodeURIComponent(token)}&since=${encodeURIComponent(this.pos ?? "")}`;
    // A name with a comma cannot be listed; it is joined by message only.
    const rooms = [...this.rooms].filter((r) => !r.includes(",")).map(encodeURIComponent);
    let list = "";
    for (const room of rooms) {
      if (list.length + room.length + 1 > this.options.roomsParamBytesMax) break;
      list += (list ? "," : "") + room;
    }
    if (list) query += `&rooms=${list}`;
    return this.url + (this.url.includes("?") ? "&" : "?") + query;
  }

  /** The token to connect with: the string, or the function's (again when expired). */
  async _currentToken() {
    if (typeof this.options.token === "string") return this.options.token;
    if (this._token === null || tokenExpiresWithin(this._token, this.options.tokenRefreshMarginMs)) {
      this._token = null;
      const token = await this.options.token();
      if (typeof token !== "string" || token === "") throw new TypeError("token function returned no string");
      this._token = token;
    }
    return this._token;
  }

  _onClose(code, reason) {
    this._detach();
    const why = { code, reason };
    if (FINAL_CODES.has(code)) {
      this._stop(null, reason, why);
      return;
    }
    if (code === CLOSE.TOKEN_EXPIRED) {
      if (typeof this.options.token === "string") {
        this._stop(null, reason, why); // nothing to refresh with
        return;
      }
      this._token = null; // ask the function again
    }
    this._retry(why);
  }

  /** Waits the backoff, then opens again. */
  _retry(why) {
    clearTimeout(this._timer);
    // A connection that stayed up a while was a success: start over.
    if (this._openedAt && Date.now() - this._openedAt >= this.options.stableAfterMs) this._attempt = 0;
    this._openedAt = 0;
    const { backoffBaseMs, backoffCapMs } = this.options;
    const delay = Math.floor(Math.random() * Math.min(backoffCapMs, backoffBaseMs * 2 ** this._attempt));
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setState("connecting", why);
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** Gives up on `ws` without waiting for a close handshake (it may never come). */
  _drop(ws, reason) {
    if (ws !== this._ws) return;
    this._detach();
    try {
      ws.close(LOCAL_TIMEOUT, reason);
    } catch (_) {
      // closing a socket that never opened may throw in some engines
    }
    this._retry({ code: LOCAL_TIMEOUT, reason });
  }

  /** Forgets the current socket and its timers. */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._timer);
    clearTimeout(this._live);
    clearTimeout(this._sendTimer);
    this._sendTimer = null;
    this._outbox = [];
    this._binaryHead = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  /** Stops for good; `code` (if any) closes the current socket. */
  _stop(code, reason, why = { code, reason }) {
    const ws = this._ws;
    this._generation++;
    this._detach();
    this._openedAt = 0;
    if (ws && code) ws.close(code, reason);
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this._onWake);
      document.removeEventListener("visibilitychange", this._onWake);
    }
    this._setState("closed", why);
  }

  // ---- frames from the node ----

  _onMessage(data) {
    this._lastHeard = Date.now();
    this._armLiveness();
    if (typeof data !== "string") {
      // A binary push: the raw body. Its id and pos come from the header
      // frame the node sends just before it.
      const head = this._binaryHead || {};
      this._binaryHead = null;
      this._deliver({ id: head.id, pos: head.pos, room: head.room, data });
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_) {
      this._emit("error", { code: "bad_frame", message: "a text frame that is not JSON" });
      return;
    }
    switch (frame.type) {
      case "push":
        this._deliver(frame);
        return;
      case "binary":
        this._binaryHead = frame; // the bytes follow in the next frame
        return;
      case "resumed":
        if (typeof frame.pos === "string") this.pos = frame.pos;
        this._emit("resumed", { recovered: frame.recovered === true, missed: frame.missed | 0 });
        return;
      case "error":
        this._emit("error", frame.error || frame);
        return;
      default:
        return; // pong, joined, left: liveness was all they carried
    }
  }

  _deliver(frame) {
    if (typeof frame.pos === "string") this.pos = frame.pos;
    if (frame.id !== undefined && frame.id !== null) {
      if (this._seen.has(frame.id)) return;
      this._seen.add(frame.id);
      this._seenOrder.push(frame.id);
      if (this._seenOrder.length > this.options.seenIdsMax) this._seen.delete(this._seenOrder.shift());
    }
    const message = { id: frame.id, pos: frame.pos, data: frame.data };
    if (frame.room !== undefined) message.room = frame.room;
    this._emit("push", message);
  }

  // ---- liveness ----

  /** Pings when the line was quiet for pingIntervalMs; drops it when the ping goes unanswered. */
  _armLiveness() {
    clearTimeout(this._live);
    const ws = this._ws;
    if (!ws || this.state !== "open") return;
    this._live = setTimeout(() => {
      this._send({ type: "ping" });
      this._live = setTimeout(() => this._drop(ws, "no answer to ping"), this.options.pongTimeoutMs);
    }, this.options.pingIntervalMs);
  }

  /** After a wake-up (tab visible again, network back): ping now, rather than waiting. */
  _checkLiveness() {
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    const ws = this._ws;
    if (!ws || this.state !== "open" || Date.now() - this._lastHeard < 1000) return;
    clearTimeout(this._live);
    this._send({ type: "ping" });
    this._live = setTimeout(() => this._drop(ws, "no answer to ping"), this.options.pongTimeoutMs);
  }

  // ---- frames to the node, paced ----

  _send(message) {
    this._outbox.push(JSON.stringify(message));
    this._flush();
  }

  _flush() {
    const ws = this._ws;
    if (!ws || this._sendTimer) return;
    const now = Date.now();
    while (this._sentAt.length && now - this._sentAt[0] >= 1000) this._sentAt.shift();
    while (this._outbox.length && this._sentAt.length < this.options.maxMessagesPerSec) {
      ws.send(this._outbox.shift());
      this._sentAt.push(now);
    }
    if (this._outbox.length) {
      this._sendTimer = setTimeout(() => {
        this._sendTimer = null;
        this._flush();
      }, 1000 - (now - this._sentAt[0]));
    }
  }

  // ---- events ----

  _setState(state, why) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", state, why);
  }

  _emit(event, ...args) {
    for (const fn of [...this._handlers[event]]) {
      try {
        fn(...args);
      } catch (error) {
        setTimeout(() => {
          throw error; // report a handler's bug without breaking the client
        });
      }
    }
  }
}

/** Whether a JWT's `exp` is within `marginMs` of now (false when unreadable). */
function tokenExpiresWithin(token, marginMs) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims.exp === "number" && claims.exp * 1000 - Date.now() < marginMs;
  } catch (_) {
    return false;
  }
}
