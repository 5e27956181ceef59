"""Old import paths of modules that moved into the stage packages still import, for one release,
with a DeprecationWarning that names the new path; they forward to the very same objects."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from npcrl._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_path_names_a_module_that_exists(old: str) -> None:
    assert importlib.util.find_spec(MOVED[old]) is not None, f"{old} forwards to missing {MOVED[old]}"


def run_fresh(code: str) -> None:
    """Run ``code`` in a fresh interpreter (its own import state and warnings); it must succeed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_an_old_path_warns_and_forwards_to_the_same_objects() -> None:
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from npcrl.bundle import load_bundle\n"
        "    import npcrl.rewards as old_rewards\n"
        "import npcrl.runtime.bundle, npcrl.reward.spec\n"
        "assert load_bundle is npcrl.runtime.bundle.load_bundle\n"
        "assert old_rewards.RewardSpec is npcrl.reward.spec.RewardSpec\n"
        "messages = [str(w.message) for w in caught if w.category is DeprecationWarning]\n"
        "assert any('npcrl.runtime.bundle' in m for m in messages), messages\n"
        "assert any('npcrl.reward.spec' in m for m in messages), messages\n"
    )
    run_fresh(code)


def test_setting_a_name_on_an_old_path_reaches_the_new_module() -> None:
    """Code that patches a module attribute through the old path patches what the new one uses."""
    code = (
        "import warnings; warnings.simplefilter('ignore')\n"
        "import npcrl.sampler as old\n"
        "import npcrl.runtime.sampler as new\n"
        "old.SOME_FLAG = 7\n"
        "assert new.SOME_FLAG == 7\n"
    )
    run_fresh(code)


def test_no_module_of_the_project_imports_an_old_path() -> None:
    code = (
        "import warnings, sys\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "import npcrl, npcrl.agent, npcrl.runtime, npcrl.playlog, npcrl.reward.spec, npcrl.sim, npcrl.evaluation\n"
        "import npcrl.cli.main, npcrl.loop.promotion\n"
        "from npcrl._moved import MOVED\n"
        "loaded = sorted(set(MOVED) & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    run_fresh(code)
