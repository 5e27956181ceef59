"""The malloc arena cap that keeps a long session's memory flat (see npcrl.runtime.malloc)."""

from __future__ import annotations

import platform

import pytest

import npcrl.runtime.model
from npcrl.runtime.malloc import limit_malloc_arenas
from npcrl.runtime.model import OnnxCausalLM, SessionOptions


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the cap is a glibc setting")
def test_glibc_takes_the_arena_cap():
    assert limit_malloc_arenas(2)


@pytest.mark.parametrize(("arenas", "expected"), [(2, [2]), (None, [])], ids=["default-cap", "left-alone"])
def test_a_model_caps_malloc_arenas_unless_told_not_to(tiny_bundle, monkeypatch, arenas, expected):
    asked: list[int] = []
    monkeypatch.setattr(npcrl.runtime.model, "limit_malloc_arenas", lambda n: asked.append(n) or True)
    OnnxCausalLM(tiny_bundle, SessionOptions(malloc_arenas=arenas, verify_hashes=False))
    assert asked == expected
    assert SessionOptions().malloc_arenas == 2


def test_elsewhere_than_glibc_the_cap_does_nothing(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert not limit_malloc_arenas(2)
