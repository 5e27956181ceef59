# A reusable client node for `npcrl serve` (protocol 1, docs/PROTOCOL.md) on Godot 3's
# WebSocketClient. Add it to a scene, call connect_to_server(url), then open_conversation,
# say, rate / record_event and end_conversation; the replies arrive as signals.
extends Node

signal connected()
signal disconnected()
signal welcome(info)
signal opened(conversation, greeting, info)
# One streamed piece of a line that is still being generated.
signal delta(conversation, turn, text)
# The final displayed line; `info` is the whole message (fallback, filtered, cancelled, ...).
signal line(conversation, turn, text, info)
signal recorded(conversation, kind, turn)
signal ended(conversation)
# A protocol error (the connection stays up) or a lost connection (code "connection").
signal error(code, message, id)

const PROTOCOL := 1

var _ws := WebSocketClient.new()
var _open := false
var _next_id := 0


func _ready() -> void:
	_ws.connect("connection_established", self, "_on_established")
	_ws.connect("connection_error", self, "_on_connection_error")
	_ws.connect("connection_closed", self, "_on_closed")
	_ws.connect("server_close_request", self, "_on_server_close_request")
	_ws.connect("data_received", self, "_on_data")


func _process(_delta: float) -> void:
	# WebSocketClient does nothing on its own: it sends and receives only while polled.
	if _ws.get_connection_status() != NetworkedMultiplayerPeer.CONNECTION_DISCONNECTED:
		_ws.poll()


# url: ws://HOST:PORT/v1/ws; token: the server's --token, if it has one.
func connect_to_server(url: String, token: String = "") -> int:
	var full := url
	if token != "":
		full += ("&" if "?" in url else "?") + "token=" + token.percent_encode()
	return _ws.connect_to_url(full)


func is_connected_to_server() -> bool:
	return _open


func close() -> void:
	_ws.disconnect_from_host(1000, "bye")


# Each request carries a fresh id, echoed in the reply or error that answers it; returns it.
func hello() -> String:
	return _send({"type": "hello", "protocol": PROTOCOL})


func open_conversation(conversation: String, npc: String, player: String) -> String:
	return _send({"type": "open", "conversation": conversation, "npc": npc, "player": player})


func say(conversation: String, text: String) -> String:
	return _send({"type": "say", "conversation": conversation, "text": text})


# kind: reply, rating, walked_away, quest_accepted, trade or a custom kind; turn "" = the last turn.
func record_event(conversation: String, kind: String, value = null, turn: String = "", extra: Dictionary = {}) -> String:
	var message := {"type": "event", "conversation": conversation, "kind": kind}
	for key in extra:
		message[key] = extra[key]
	if value != null:
		message["value"] = value
	if turn != "":
		message["turn"] = turn
	return _send(message)


func rate(conversation: String, value: int, turn: String = "") -> String:
	return record_event(conversation, "rating", value, turn)


func cancel(conversation: String) -> String:
	return _send({"type": "cancel", "conversation": conversation})


func end_conversation(conversation: String) -> String:
	return _send({"type": "end", "conversation": conversation})


func _send(message: Dictionary) -> String:
	_next_id += 1
	var id := "g%d" % _next_id
	message["id"] = id
	if not _open:
		emit_signal("error", "connection", "not connected", id)
		return id
	_ws.get_peer(1).put_packet(to_json(message).to_utf8())
	return id


func _on_established(_protocol: String) -> void:
	# Every protocol message is a JSON text frame.
	_ws.get_peer(1).set_write_mode(WebSocketPeer.WRITE_MODE_TEXT)
	_open = true
	emit_signal("connected")


func _on_connection_error() -> void:
	_open = false
	emit_signal("error", "connection", "could not connect or the connection failed", null)
	emit_signal("disconnected")


func _on_closed(_was_clean: bool) -> void:
	_open = false
	emit_signal("disconnected")


func _on_server_close_request(code: int, reason: String) -> void:
	emit_signal("error", "connection", "server closed the connection (%d %s)" % [code, reason], null)


func _on_data() -> void:
	# Drain every packet: one signal may stand for several frames received in one poll.
	var peer := _ws.get_peer(1)
	while peer.get_available_packet_count() > 0:
		var parsed := JSON.parse(peer.get_packet().get_string_from_utf8())
		if parsed.error != OK or typeof(parsed.result) != TYPE_DICTIONARY:
			emit_signal("error", "bad_json", "the server sent a frame that is not a JSON object", null)
			continue
		_dispatch(parsed.result)


func _dispatch(message: Dictionary) -> void:
	var conversation = message.get("conversation", "")
	match message.get("type", ""):
		"welcome":
			emit_signal("welcome", message)
		"opened":
			emit_signal("opened", conversation, message.get("greeting", ""), message)
		"delta":
			emit_signal("delta", conversation, message.get("turn", ""), message.get("text", ""))
		"line":
			emit_signal("line", conversation, message.get("turn", ""), message.get("text", ""), message)
		"recorded":
			emit_signal("recorded", conversation, message.get("kind", ""), message.get("turn", ""))
		"ended":
			emit_signal("ended", conversation)
		"error":
			emit_signal("error", message.get("code", ""), message.get("message", ""), message.get("id"))
