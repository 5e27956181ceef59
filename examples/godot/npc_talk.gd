# An NPC that talks: type a line, watch the NPC's answer stream in, rate it with + or -.
# Settings come from user arguments or environment variables (see settings.gd); with
# --npcrl-scripted (or NPCRL_SCRIPTED=1) a ScriptedPlayer plays the player and quits.
extends Control

const Settings = preload("res://settings.gd")
const ScriptedPlayer = preload("res://scripted_player.gd")

signal npc_ready(greeting)

onready var client = $NpcrlClient
onready var npc_line: Label = $Panel/NpcLine
onready var player_input: LineEdit = $Panel/PlayerInput
onready var status: Label = $Panel/Status

var settings: Settings
var conversation := "npc-talk"
var last_turn := ""


func _ready() -> void:
	settings = Settings.new()
	settings.read()
	client.connect("connected", self, "_on_connected")
	client.connect("opened", self, "_on_opened")
	client.connect("delta", self, "_on_delta")
	client.connect("line", self, "_on_line")
	client.connect("error", self, "_on_error")
	player_input.connect("text_entered", self, "_on_text_entered")
	if settings.scripted:
		var player = ScriptedPlayer.new()
		player.name = "ScriptedPlayer"
		add_child(player)
		player.start(self, settings)
	status.text = "connecting to " + settings.url
	var err: int = client.connect_to_server(settings.url, settings.token)
	if err != OK:
		_on_error("connection", "could not start connecting (error %d)" % err, null)


func say(text: String) -> void:
	npc_line.text = ""
	client.say(conversation, text)


func rate(value: int) -> void:
	client.rate(conversation, value, last_turn)


func _on_connected() -> void:
	status.text = "connected"
	client.open_conversation(conversation, settings.npc, settings.player)


func _on_opened(_conversation: String, greeting: String, _info: Dictionary) -> void:
	npc_line.text = greeting
	emit_signal("npc_ready", greeting)


func _on_delta(_conversation: String, _turn: String, text: String) -> void:
	npc_line.text += text


func _on_line(_conversation: String, turn: String, text: String, _info: Dictionary) -> void:
	# The final line is what the player sees: it may differ from the joined deltas.
	npc_line.text = text
	last_turn = turn


func _on_error(code: String, message: String, _id) -> void:
	status.text = "error %s: %s" % [code, message]


func _on_text_entered(text: String) -> void:
	player_input.clear()
	if text == "+" or text == "-":
		rate(1 if text == "+" else -1)
	elif text.strip_edges() != "":
		say(text)
