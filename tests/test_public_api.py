"""``import npcrl`` is the game-facing API: every public name resolves and is documented, the
import stays free of torch, pygame and the trainer, and the version has one source."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import npcrl
from npcrl.agent.conversation import Conversation

ROOT = Path(__file__).resolve().parents[1]
# what game_demo imports from npcrl today
GAME_NAMES = {
    "NpcAgent", "Persona", "builtin_personas", "BundleError", "NpcrlError", "current_bundle",
    "default_bundle_dir", "user_cache_dir", "PlayLogWriter", "Record", "read_log_dir", "reward_summary",
    "turn_rewards", "RewardSpec", "default_reward_spec", "migrate_if_old", "OnnxCausalLM", "SessionOptions",
    "default_thread_count",
}  # fmt: skip


def own_doc(obj: object) -> str:
    """The object's own docstring (not a dataclass's generated signature, not a base class's)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if isinstance(obj, type) and doc and doc.startswith(f"{obj.__name__}("):
        return ""
    return (doc or "").strip()


def test_the_game_names_are_all_public() -> None:
    assert GAME_NAMES <= set(npcrl.__all__)
    assert len(npcrl.__all__) == len(set(npcrl.__all__))


def test_every_public_name_resolves_and_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Add a talking NPC to your game") :]
    for name in npcrl.__all__:
        obj = getattr(npcrl, name)
        assert getattr(obj, "__name__", name) == name or name == "Record", name
        assert f"`{name}`" in section, f"{name} is not in README.md's API section"
        if callable(obj) and not isinstance(obj, type(int | str)):
            assert own_doc(obj), f"npcrl.{name} has no docstring"
    assert set(dir(npcrl)) >= set(npcrl.__all__)


def test_unknown_names_still_raise_attribute_error() -> None:
    try:
        npcrl.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("npcrl.NoSuchThing resolved")


def test_import_npcrl_loads_no_torch_pygame_or_trainer() -> None:
    code = (
        "import json, sys, npcrl\n"
        "before = sorted(sys.modules)\n"
        "[getattr(npcrl, name) for name in npcrl.__all__]\n"
        "print(json.dumps([before, sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    at_import, after_use = json.loads(out.stdout)
    heavy = ("torch", "pygame", "transformers", "npcrl.train", "npcrl.cli", "npcrl.loop.run", "game_demo")
    for loaded in (at_import, after_use):
        assert not [m for m in loaded if m.split(".")[0] in heavy or m.startswith(heavy)]
    assert "onnxruntime" not in at_import  # the import itself stays cheap: names load their modules on use


def test_the_version_has_one_source() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "npcrl.__version__"}' in pyproject
    assert "\nversion = " not in pyproject.split("[tool.setuptools.dynamic]")[0]
    assert npcrl.__version__.count(".") == 2
    assert (ROOT / "npcrl" / "py.typed").is_file()


def test_test_hooks_are_not_in_public_signatures() -> None:
    assert list(inspect.signature(Conversation.respond_async).parameters) == ["self", "player_text"]
