"""Who may connect: loopback by default, a token whenever one is set (a server off loopback
without one refuses to start), and nothing a client sends names a file."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from serve_helpers import HANG_GUARD_S, client, running
from websockets.exceptions import ConnectionClosed

from npcrl.errors import NpcrlError
from npcrl.serve.security import UNAUTHORIZED_CLOSE, check_exposure, is_loopback

TOKEN = "s3cret-token"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_a_host_off_loopback_needs_a_token(host: str) -> None:
    with pytest.raises(NpcrlError, match="--token"):
        check_exposure(host, None)
    check_exposure(host, TOKEN)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, None)


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(NpcrlError, match="empty"):
        check_exposure("127.0.0.1", "")


def test_a_missing_or_wrong_token_is_refused_and_the_right_one_accepted(make_state) -> None:
    with running(make_state(), token=TOKEN) as port:
        health = f"http://127.0.0.1:{port}/health"
        assert get(health)[0] == 401
        status, body = get(health, {"Authorization": "Bearer wrong"})
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert get(health, {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(f"{health}?token={TOKEN}")[0] == 200

        for query, headers in (("", None), ("?token=wrong", None), ("", {"Authorization": "Bearer nope"})):
            with client(port, query, headers) as talk:
                assert talk.receive()["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    talk.ws.recv(timeout=HANG_GUARD_S)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == UNAUTHORIZED_CLOSE

        with client(port, f"?token={TOKEN}") as talk:
            assert talk.open("c1")["type"] == "opened"
        with client(port, headers={"Authorization": f"Bearer {TOKEN}"}) as talk:
            assert talk.open("c1")["type"] == "opened"
