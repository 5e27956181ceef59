"""The server is game-side code: it never imports the trainer or torch, not even inside a function,
and its web libraries stay out of ``import npcrl`` and every other package."""

from __future__ import annotations

from import_graph import all_imports, layer_of

TRAINER_SIDE = ("npcrl.train", "npcrl.loop.run", "torch", "transformers", "exporters")
WEB_LIBRARIES = ("starlette", "uvicorn", "websockets")


def _is(target: str, roots: tuple[str, ...]) -> bool:
    return any(target == root or target.startswith(root + ".") for root in roots)


def test_serve_never_imports_the_trainer_or_torch() -> None:
    found = [f"{imp.at} imports {imp.target}" for imp in all_imports() if layer_of(imp.source.name) == "serve"]
    assert not [line for line in found if _is(line.rsplit(" ", 1)[1], TRAINER_SIDE)]


def test_only_serve_imports_the_web_libraries() -> None:
    outside = [
        f"{imp.at} imports {imp.target}"
        for imp in all_imports()
        if _is(imp.target, WEB_LIBRARIES) and layer_of(imp.source.name) != "serve"
    ]
    assert not outside
