// Tests of npcrl-client.mjs for Node's test runner:
//   node --test examples/js/                       (Node 22+; add --experimental-websocket on Node 20)
// The first tests use a stand-in socket. The last one talks to a running `npcrl serve` when
// NPCRL_URL names its WebSocket (ws://HOST:PORT/v1/ws); NPCRL_REPORT, if set, names a file that
// receives the turn ids it rated, as JSON, so a caller can find them in the play log.
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { test } from "node:test";

import { NpcrlClient, NpcrlError } from "./npcrl-client.mjs";

/** Records what the client sends; `reply` delivers a server message to it. */
class StandInSocket {
  constructor() {
    this.sent = [];
    this.listeners = { message: [], close: [] };
  }
  addEventListener(kind, listener) {
    this.listeners[kind]?.push(listener);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    for (const listener of this.listeners.close) listener({});
  }
  reply(message) {
    for (const listener of this.listeners.message) listener({ data: JSON.stringify(message) });
  }
}

test("a say streams its deltas, then resolves with the line that answers its id", async () => {
  const socket = new StandInSocket();
  const client = new NpcrlClient(socket);
  const pieces = [];
  const said = client.say("c1", "Can you fix my sword?", (text) => pieces.push(text));
  const { id } = socket.sent[0];
  assert.deepEqual(socket.sent[0], { type: "say", conversation: "c1", text: "Can you fix my sword?", id });
  socket.reply({ type: "delta", conversation: "c1", turn: "c1:0", text: "Aye, " });
  socket.reply({ type: "delta", conversation: "c1", turn: "c1:0", text: "friend." });
  socket.reply({ type: "line", conversation: "c1", turn: "c1:0", text: "Aye, friend.", id });
  const line = await said;
  assert.deepEqual(pieces, ["Aye, ", "friend."]);
  assert.equal(line.turn, "c1:0");
});

test("an error answering a request rejects it with the protocol's code", async () => {
  const socket = new StandInSocket();
  const client = new NpcrlClient(socket);
  const ended = client.end("nope");
  socket.reply({ type: "error", code: "unknown_conversation", message: "no conversation nope", id: socket.sent[0].id });
  await assert.rejects(ended, (error) => error instanceof NpcrlError && error.code === "unknown_conversation");
});

test("a busy say leaves the running line its deltas", async () => {
  const socket = new StandInSocket();
  const client = new NpcrlClient(socket);
  const first = [];
  const running = client.say("c1", "one", (text) => first.push(text));
  const second = client.say("c1", "two", () => assert.fail("the busy say got a delta"));
  socket.reply({ type: "error", code: "busy", message: "a line is running", id: socket.sent[1].id });
  await assert.rejects(second, (error) => error.code === "busy");
  socket.reply({ type: "delta", conversation: "c1", turn: "c1:0", text: "Hm." });
  socket.reply({ type: "line", conversation: "c1", turn: "c1:0", text: "Hm.", id: socket.sent[0].id });
  assert.equal((await running).text, "Hm.");
  assert.deepEqual(first, ["Hm."]);
});

test("errors that answer no request go to onerror; a closed connection rejects what is pending", async () => {
  const socket = new StandInSocket();
  const client = new NpcrlClient(socket);
  const unanswered = [];
  client.onerror = (error) => unanswered.push(error.code);
  socket.reply({ type: "error", code: "rate_limited", message: "slow down" });
  const opened = client.open("c1", { npc: "blacksmith", player: "p1" });
  socket.close();
  await assert.rejects(opened, (error) => error.code === "connection");
  assert.deepEqual(unanswered, ["rate_limited"]);
});

test("a conversation with a running server", { skip: !process.env.NPCRL_URL && "NPCRL_URL is not set" }, async () => {
  const client = await NpcrlClient.connect(process.env.NPCRL_URL, { token: process.env.NPCRL_TOKEN ?? "" });
  try {
    assert.equal((await client.hello()).protocol, 1);
    const opened = await client.open("js-c1", { npc: "blacksmith", player: "js-player" });
    assert.equal(typeof opened.greeting, "string");
    const pieces = [];
    const line = await client.say("js-c1", "Can you fix my sword?", (text) => pieces.push(text));
    assert.equal(line.type, "line");
    assert.equal(line.cancelled, false);
    assert.match(line.turn, /^.+:\d+$/);
    const recorded = await client.rate("js-c1", 1, line.turn);
    assert.deepEqual([recorded.kind, recorded.turn], ["rating", line.turn]);
    await assert.rejects(client.say("js-unknown", "hello?"), (error) => error.code === "unknown_conversation");
    assert.equal((await client.end("js-c1")).type, "ended");
    if (process.env.NPCRL_REPORT) writeFileSync(process.env.NPCRL_REPORT, JSON.stringify({ rated: [line.turn] }));
  } finally {
    client.close();
  }
});
