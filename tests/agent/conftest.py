"""Fixtures of the agent tests."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def escaped():
    """Exceptions that escaped any thread while the test ran."""
    caught: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = caught.append
    yield caught
    threading.excepthook = previous
