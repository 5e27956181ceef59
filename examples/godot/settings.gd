# Where and how to connect: `--npcrl-NAME=VALUE` user arguments first, then NPCRL_NAME
# environment variables, then the defaults below.
extends Reference

var url := "ws://127.0.0.1:8377/v1/ws"
var token := ""
var npc := "blacksmith"
var player := "godot-player"
var scripted := false
var timeout_s := 120.0


func read() -> void:
	url = _setting("url", url)
	token = _setting("token", token)
	npc = _setting("npc", npc)
	player = _setting("player", player)
	scripted = _setting("scripted", "1" if scripted else "0") in ["1", "true", "yes"]
	timeout_s = float(_setting("timeout", str(timeout_s)))


func _setting(name: String, default: String) -> String:
	var prefix := "--npcrl-%s=" % name
	for arg in OS.get_cmdline_args():
		if arg == "--npcrl-" + name:
			return "1"  # a bare flag, e.g. --npcrl-scripted
		if arg.begins_with(prefix):
			return arg.substr(prefix.length(), arg.length() - prefix.length())
	var env := OS.get_environment("NPCRL_" + name.to_upper())
	return env if env != "" else default
