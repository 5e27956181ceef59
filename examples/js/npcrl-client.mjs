// A small client for `npcrl serve` (protocol 1, docs/PROTOCOL.md) for browsers and Node.
// It uses the global WebSocket: browsers, Node 22+, and Node 20 run with --experimental-websocket.
//
//   const npc = await NpcrlClient.connect("ws://127.0.0.1:8377/v1/ws");
//   await npc.open("c1", { npc: "blacksmith", player: "p1" });
//   const line = await npc.say("c1", "Can you fix my sword?", (piece) => show(piece));
//   await npc.rate("c1", 1, line.turn);
//   await npc.end("c1");
//   npc.close();

export const PROTOCOL = 1;

/** A protocol error (`code` as in the protocol: busy, unknown_conversation, ...) or a lost connection ("connection"). */
export class NpcrlError extends Error {
  constructor(code, message, id = null) {
    super(`${code}: ${message}`);
    this.name = "NpcrlError";
    this.code = code;
    this.id = id;
  }
}

export class NpcrlClient {
  /** Opens a connection; `token` is the server's --token, if it has one. */
  static connect(url, { token = "", WebSocket: Socket = globalThis.WebSocket } = {}) {
    if (typeof Socket !== "function") {
      throw new Error("no global WebSocket: use a browser, Node 22+, or Node 20 with --experimental-websocket");
    }
    const address = new URL(url);
    if (token) address.searchParams.set("token", token);
    const socket = new Socket(address.toString());
    return new Promise((resolve, reject) => {
      const failed = () => reject(new NpcrlError("connection", `could not connect to ${url}`));
      socket.addEventListener("error", failed);
      socket.addEventListener("open", () => {
        socket.removeEventListener("error", failed);
        resolve(new NpcrlClient(socket));
      });
    });
  }

  /** Wraps an open socket; `onerror` receives errors that answer no request (e.g. rate_limited). */
  constructor(socket) {
    this.socket = socket;
    this.onerror = () => {};
    this.pending = new Map(); // request id -> {resolve, reject, conversation, onDelta}
    this.running = new Map(); // conversation -> the pending say whose line is being generated
    this.nextId = 0;
    socket.addEventListener("message", (event) => this.receive(event.data));
    socket.addEventListener("close", () => this.closed());
  }

  hello() {
    return this.request({ type: "hello", protocol: PROTOCOL });
  }

  /** `options`: `npc` (a persona the server has loaded) or `persona` (inline card with a name), and `player`. */
  open(conversation, options) {
    return this.request({ type: "open", conversation, ...options });
  }

  /** Resolves with the final `line` message; `onDelta(text, message)` sees each streamed piece first. */
  say(conversation, text, onDelta = null) {
    return this.request({ type: "say", conversation, text }, onDelta);
  }

  /** kind: reply, rating, walked_away, quest_accepted, trade or a custom kind; `turn` defaults to the last turn. */
  event(conversation, kind, fields = {}) {
    return this.request({ type: "event", conversation, kind, ...fields });
  }

  rate(conversation, value, turn = undefined) {
    return this.event(conversation, "rating", turn === undefined ? { value } : { value, turn });
  }

  /** Stops the running line: its `say` resolves with `cancelled: true`. */
  cancel(conversation) {
    this.send({ type: "cancel", conversation });
  }

  end(conversation) {
    return this.request({ type: "end", conversation });
  }

  close() {
    this.socket.close(1000);
  }

  request(message, onDelta = null) {
    const id = `js${++this.nextId}`;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, conversation: message.conversation, onDelta };
      this.pending.set(id, entry);
      // A say while a line is running is answered with "busy": the running one keeps the deltas.
      if (message.type === "say" && !this.running.has(message.conversation)) {
        this.running.set(message.conversation, { id, ...entry });
      }
      this.send({ ...message, id });
    });
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.onerror(new NpcrlError("bad_json", "the server sent a frame that is not JSON"));
      return;
    }
    if (message.type === "delta") {
      this.running.get(message.conversation)?.onDelta?.(message.text, message);
      return;
    }
    // A line answers the say of its conversation, even if a server left out the id.
    const running = message.type === "line" ? this.running.get(message.conversation) : undefined;
    const id = message.id ?? running?.id;
    const entry = this.pending.get(id);
    if (entry === undefined) {
      if (message.type === "error") this.onerror(new NpcrlError(message.code, message.message, null));
      return;
    }
    this.pending.delete(id);
    if (this.running.get(entry.conversation)?.id === id) this.running.delete(entry.conversation);
    if (message.type === "error") entry.reject(new NpcrlError(message.code, message.message, id));
    else entry.resolve(message);
  }

  closed() {
    const lost = new NpcrlError("connection", "the connection closed");
    for (const entry of this.pending.values()) entry.reject(lost);
    this.pending.clear();
    this.running.clear();
  }
}
