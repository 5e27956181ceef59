# Headless check: says the scripted player lines one at a time, rates the last answer,
# ends the conversation and quits with exit status 0; any error, a lost connection or
# the time limit quits with exit status 1. Progress goes to stdout, one `npcrl:` line each.
extends Node

const LINES := ["Hello there!", "Can you fix my sword?", "Thank you, friend."]

var npc
var client
var time_left := 0.0
var next_line := 0
var finished := false


func start(talking_npc, settings) -> void:
	npc = talking_npc
	client = talking_npc.client
	time_left = settings.timeout_s
	npc.connect("npc_ready", self, "_on_npc_ready")
	for name in ["line", "recorded", "ended", "error", "disconnected"]:
		client.connect(name, self, "_on_" + name)
	print("npcrl: connecting to ", settings.url)


func _process(delta: float) -> void:
	time_left -= delta
	if time_left <= 0.0 and not finished:
		_finish(1, "timed out")


func _on_npc_ready(greeting: String) -> void:
	print("npcrl: greeting: ", greeting)
	_say_next()


func _say_next() -> void:
	print("npcrl: player: ", LINES[next_line])
	npc.say(LINES[next_line])
	next_line += 1


func _on_line(_conversation: String, turn: String, text: String, info: Dictionary) -> void:
	print("npcrl: turn %s: %s" % [turn, text])
	if info.get("fallback", false):
		print("npcrl: (fallback line)")
	if next_line < LINES.size():
		_say_next()
	else:
		npc.rate(1)


func _on_recorded(conversation: String, kind: String, turn: String) -> void:
	print("npcrl: recorded %s for turn %s" % [kind, turn])
	client.end_conversation(conversation)


func _on_ended(_conversation: String) -> void:
	_finish(0, "conversation ended")


func _on_error(code: String, message: String, _id) -> void:
	_finish(1, "error %s: %s" % [code, message])


func _on_disconnected() -> void:
	_finish(1, "disconnected")


func _finish(code: int, why: String) -> void:
	if finished:
		return
	finished = true
	print("npcrl: %s, exit status %d" % [why, code])
	client.close()
	get_tree().quit(code)
