"""The chat-completions endpoint of ``npcrl serve``, driven by the official ``openai`` client
against a real server (uvicorn on a free port) on a tiny bundle: whole and streamed answers,
conversations continued across requests, events against completion ids, and the play log."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from npcrl.agent.config import DEFAULT_STOPS, AgentConfig  # noqa: E402
from npcrl.agent.persona import builtin_personas  # noqa: E402
from npcrl.playlog import ConversationStart, EngagementEvent, NpcTurn, PlayLogWriter, read_log_dir  # noqa: E402
from npcrl.runtime.model import OnnxCausalLM  # noqa: E402
from npcrl.runtime.sampler import SamplerConfig  # noqa: E402
from npcrl.serve.app import build_app  # noqa: E402
from npcrl.serve.loading import ModelSource  # noqa: E402
from npcrl.serve.state import ServerState  # noqa: E402

HANG_GUARD_S = 120.0  # start-up and each answer take well under a second; this only stops a hang
TOKEN = "test-token"
# The tiny model has 256 positions: the shipped cards' system prompts do not fit, so requests
# bring a short system message (which the endpoint uses as the persona's description).
SYSTEM = "You are Brom, the village blacksmith. Answer in one or two sentences."


@dataclass(frozen=True)
class Reply:
    status_code: int
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    url: str
    writer: PlayLogWriter

    def client(self, api_key: str = TOKEN) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=HANG_GUARD_S)

    def post(self, path: str, body: object) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
                return Reply(response.status, response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.read())

    def records(self) -> list:
        self.writer.flush()
        return list(read_log_dir(self.writer.directory))


@pytest.fixture(scope="module")
def server(tiny_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    writer = PlayLogWriter(tmp_path_factory.mktemp("serve-logs"))
    sampler = SamplerConfig(temperature=1.0, seed=1, max_new_tokens=12, stop_strings=DEFAULT_STOPS)
    config = AgentConfig(sampler=sampler, prompt_token_budget=220, time_budget_s=None)
    state = ServerState(writer, builtin_personas(), ModelSource(bundle=tiny_bundles["llama-fp32"]), config)
    app = build_app(state, token=TOKEN)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while not (uv.started and state.ready):
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield Server(f"http://127.0.0.1:{port}", writer)
    uv.should_exit = True
    thread.join(HANG_GUARD_S)


def chat(*turns: str, system: str | None = SYSTEM) -> list[dict[str, str]]:
    """Messages: the system message, then user/assistant/.../user alternating from ``turns``."""
    roles = ["user", "assistant"]
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return ([{"role": "system", "content": system}] if system is not None else []) + messages


def split_id(completion_id: str) -> tuple[str, int]:
    assert completion_id.startswith("chatcmpl-")
    conversation, _, index = completion_id.removeprefix("chatcmpl-").rpartition(":")
    return conversation, int(index)


def test_models_are_the_personas(server: Server) -> None:
    ids = [model.id for model in server.client().models.list()]
    assert ids == sorted(builtin_personas())


def test_whole_answer_is_a_logged_turn_and_its_event_is_recorded(server: Server) -> None:
    response = server.client().chat.completions.create(
        model="blacksmith", messages=chat("Can you fix my sword?"), user="p-whole", max_tokens=8, temperature=0.5
    )
    assert response.object == "chat.completion"
    choice = response.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length", "content_filter")
    assert response.usage is not None and response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    assert response.model == "blacksmith"
    # the client's own way to reach a route it does not wrap, as docs/PROTOCOL.md shows it
    reply = server.client().post("/events", body={"turn": response.id, "kind": "rating", "value": 1}, cast_to=object)
    assert reply == {"recorded": True, "turn": response.id, "kind": "rating"}

    conversation, index = split_id(response.id)
    records = server.records()
    turns = [r for r in records if isinstance(r, NpcTurn) and r.conversation_id == conversation]
    assert [(t.turn_index, t.text) for t in turns] == [(index, choice.message.content)]
    assert not turns[0].fallback, turns[0].filter_reason  # the model spoke, with the system message as prompt
    assert turns[0].sampler["max_new_tokens"] == 8 and turns[0].sampler["temperature"] == 0.5
    events = [r for r in records if isinstance(r, EngagementEvent) and r.conversation_id == conversation]
    assert [(e.kind, e.turn_index, e.value) for e in events] == [("rating", index, 1.0)]


def test_streamed_answer_ends_with_done_and_the_chat_continues(server: Server) -> None:
    client = server.client()
    stream = client.chat.completions.create(
        model="blacksmith",
        messages=chat("Hello there, smith!"),
        user="p-stream",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client stops at "data: [DONE]"
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and len(reasons) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1

    follow = client.chat.completions.create(
        model="blacksmith", messages=chat("Hello there, smith!", text, "And the price?"), user="p-stream"
    )
    first, second = split_id(chunks[0].id), split_id(follow.id)
    assert second == (first[0], first[1] + 1)  # the same conversation, its next turn
    turns = [r for r in server.records() if isinstance(r, NpcTurn) and r.conversation_id == first[0]]
    assert [t.text for t in turns] == [text, follow.choices[0].message.content]


def test_unknown_model_uses_the_default_persona(server: Server) -> None:
    response = server.client().chat.completions.create(
        model="gpt-4o-mini", messages=chat("Good day!"), user="p-default"
    )
    conversation, _ = split_id(response.id)
    starts = [r for r in server.records() if isinstance(r, ConversationStart) and r.conversation_id == conversation]
    assert [s.persona_name for s in starts] == [builtin_personas()["blacksmith"].name]


def test_generation_runs_off_the_event_loop_and_a_second_line_meanwhile_is_busy(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_generate = OnnxCausalLM.generate

    def held_generate(self, *args, **kwargs):
        entered.set()
        release.wait(HANG_GUARD_S)
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(OnnxCausalLM, "generate", held_generate)
    body = {"model": "blacksmith", "messages": chat("Hi!"), "user": "p-busy"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(server.post, "/v1/chat/completions", body)
        try:
            assert entered.wait(HANG_GUARD_S)
            # the server still answers while the turn's generation is held
            assert [model.id for model in server.client().models.list()] == sorted(builtin_personas())
            second = server.post("/v1/chat/completions", body)
        finally:
            release.set()
        assert first.result(HANG_GUARD_S).status_code == 200
    assert second.status_code == 409 and second.json()["error"]["code"] == "busy"


def test_history_that_was_not_said_is_refused(server: Server) -> None:
    client = server.client()
    client.chat.completions.create(model="blacksmith", messages=chat("Hi!"), user="p-history")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="blacksmith", messages=chat("Hi!", "Words I never said.", "Well?"), user="p-history"
        )
    assert caught.value.code == "history_mismatch" and caught.value.param == "messages"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hm."}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
        ({"user": ""}, "user"),
    ],
)
def test_bad_request_is_a_400_naming_the_field(server: Server, change: dict, param: str) -> None:
    body = {"model": "blacksmith", "messages": chat("Hi!"), "user": "p-bad", **change}
    reply = server.post("/v1/chat/completions", body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]


def test_body_that_is_not_json_is_a_400(server: Server) -> None:
    reply = server.post("/v1/chat/completions", b"{not json")
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_json"


def test_event_for_an_unknown_completion_is_a_404(server: Server) -> None:
    reply = server.post("/v1/events", {"turn": "chatcmpl-nobody:0", "kind": "rating", "value": 1})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "unknown_turn" and reply.json()["error"]["param"] == "turn"


def test_event_with_a_bad_kind_is_a_400(server: Server) -> None:
    response = server.client().chat.completions.create(model="blacksmith", messages=chat("Hi!"), user="p-kind")
    reply = server.post("/v1/events", {"turn": response.id, "kind": "Not A Kind"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "kind"


def test_chat_after_the_player_walked_away_must_start_over(server: Server) -> None:
    client = server.client()
    first = client.chat.completions.create(model="blacksmith", messages=chat("Hi!"), user="p-walk")
    assert server.post("/v1/events", {"turn": first.id, "kind": "walked_away"}).status_code == 200
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="blacksmith", messages=chat("Hi!", first.choices[0].message.content, "Wait!"), user="p-walk"
        )
    assert caught.value.code == "conversation_ended"
    again = client.chat.completions.create(model="blacksmith", messages=chat("Hi again!"), user="p-walk")
    assert split_id(again.id)[0] != split_id(first.id)[0]


def test_wrong_token_is_refused(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
