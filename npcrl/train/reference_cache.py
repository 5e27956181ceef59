"""The frozen reference's hidden states at each logged turn's response, kept across passes.

The reference never changes and a logged turn's tokens never change, so what the reference makes of
a turn is the same in every pass over the turns. A run of several passes (``ppo.passes`` > 1, or a
``ppo.kl_stop`` run that goes on past one) computed it again in every pass: the reference pass is
~17% of an fp32 iteration. So the last hidden states at the response positions, (response tokens,
hidden size) float32 per turn, are kept the first time a turn is scored and read back after; the
output layer (a few percent of the pass) still runs, because the exact KL needs the reference's whole
distribution, which per turn would be ~85× larger than its hidden states (SmolLM2: 49,152 against 576).

Exact within a run: a turn's reference is what it was when first scored. Against a run that
recomputes it, only float rounding differs (a turn scored beside other turns is padded differently).
For a resumed run to end where an uninterrupted one would, the states are kept on disk too, one
file per iteration that scored new turns (``OUT/state/reference/iter-NNNNNN.safetensors``, written
before that iteration's checkpoint); a resume reads those up to its checkpoint and removes the
later ones. Memory and disk: ~2.3 KB per response token (SmolLM2), ~90 MB for 1,000 turns of ~40
tokens. The on-policy mode samples new responses every iteration and keeps nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from npcrl.durable import atomic_write, fsync_dir

FOLDER = "reference"
_FILE = re.compile(r"^iter-(\d{6})\.safetensors$")


class ReferenceHidden:
    """Turn index (in the trainer's training turns) -> the reference's response hidden states."""

    def __init__(self) -> None:
        self._rows: dict[int, torch.Tensor] = {}
        self._unsaved: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, keys: list[int]) -> list[torch.Tensor] | None:
        """Every key's states, or None when one of them is not kept (the batch then runs the reference)."""
        if not all(key in self._rows for key in keys):
            return None
        return [self._rows[key] for key in keys]

    def add(self, key: int, hidden: torch.Tensor) -> None:
        """Keep ``hidden`` for ``key`` unless it is kept already (the first computation stays)."""
        if key not in self._rows:
            self._rows[key] = hidden
            self._unsaved[key] = hidden

    def save(self, state_dir: Path, iteration: int) -> None:
        """Write the states kept since the last save as iteration ``iteration``'s file (nothing when
        there are none: after the first pass every iteration reads and none adds)."""
        if not self._unsaved:
            return
        folder = state_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"turn.{key}": tensor.contiguous() for key, tensor in self._unsaved.items()}
        atomic_write(folder / f"iter-{iteration:06d}.safetensors", save(tensors))
        self._unsaved.clear()

    def restore(self, state_dir: Path, iteration: int, shapes: Mapping[int, tuple[int, ...]]) -> list[str]:
        """Keep what the files of iterations up to ``iteration`` hold (the checkpoint resumed from)
        and remove the later ones, which the resumed run writes again. ``shapes``: each turn's
        expected shape. A file that cannot be read, or holds a turn of another shape or a non-finite
        number, is removed with those after it (the turns are computed again: slower, never wrong).
        Returns a line per file dropped that way."""
        self._rows.clear()
        self._unsaved.clear()
        folder = state_dir / FOLDER
        files = sorted(p for p in folder.iterdir() if _FILE.match(p.name)) if folder.is_dir() else []
        dropped: list[str] = []
        for path in files:
            number = int(_FILE.match(path.name).group(1))  # type: ignore[union-attr]
            problem = None if number > iteration or dropped else self._read(path, shapes)
            if number > iteration or dropped or problem:
                if problem:
                    dropped.append(f"{path}: {problem}; its turns are scored again")
                path.unlink(missing_ok=True)  # every process of a torchrun run removes them
        if files:
            fsync_dir(folder)
        return dropped

    def _read(self, path: Path, shapes: Mapping[int, tuple[int, ...]]) -> str | None:
        """Keep ``path``'s states; what is wrong with it instead (nothing kept), or None."""
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            return f"cannot be read ({exc})"
        rows: dict[int, torch.Tensor] = {}
        for name, tensor in tensors.items():
            key = int(name.split(".", 1)[1]) if re.fullmatch(r"turn\.\d+", name) else -1
            if key not in shapes or tuple(tensor.shape) != shapes[key] or tensor.dtype != torch.float32:
                return f"{name!r} is not a training turn's states ({tuple(tensor.shape)}, {tensor.dtype})"
            if not bool(torch.isfinite(tensor).all()):
                return f"{name!r} holds a non-finite number"
            rows[key] = tensor
        for key, tensor in rows.items():
            self._rows.setdefault(key, tensor)
        return None
