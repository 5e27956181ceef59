"""Atomic promotion of bundles, and rollback."""

from __future__ import annotations

import pytest

from npcrl.bundle import load_bundle
from npcrl.errors import BundleError
from npcrl.promotion import current_bundle, history, promote, rollback


def test_promote_then_rollback(tiny_bundles, tmp_path):
    store = tmp_path / "store"
    assert current_bundle(store) is None
    first = promote(store, tiny_bundles["llama-fp32"])
    assert current_bundle(store).bundle_id == first.bundle_id == load_bundle(tiny_bundles["llama-fp32"]).bundle_id
    second = promote(store, tiny_bundles["llama-q8"])
    assert current_bundle(store).bundle_id == second.bundle_id != first.bundle_id
    assert [p.bundle_id for p in history(store)] == [first.bundle_id]
    restored = rollback(store)
    assert restored.bundle_id == first.bundle_id == current_bundle(store).bundle_id
    assert history(store) == []
    with pytest.raises(BundleError, match="no earlier promotion"):
        rollback(store)


def test_a_broken_bundle_is_never_promoted(tiny_bundles, tmp_path):
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        promote(tmp_path / "store", tmp_path / "missing")
    assert current_bundle(tmp_path / "store") is None


def test_corrupt_pointer_is_named(tmp_path):
    (tmp_path / "CURRENT").write_text("{oops")
    with pytest.raises(BundleError, match="CURRENT: unreadable promotion pointer"):
        current_bundle(tmp_path)
