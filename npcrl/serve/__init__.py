"""``npcrl serve``: NPC conversations over a local network protocol, for engines that are not Python.

One server process holds the model and the play-log writer; game clients (Godot, Unity, Unreal,
a browser) talk to it over a WebSocket (``/v1/ws``) or the chat-completions endpoint. The protocol
is described in docs/PROTOCOL.md. The web libraries (Starlette, uvicorn, websockets) come with the
``serve`` extra: ``pip install "npcrl[serve]"``.
"""
