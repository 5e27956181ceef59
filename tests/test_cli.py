"""The npcrl command line on tiny models: export, info, generate, and clear errors."""

from __future__ import annotations

import json

from npcrl.cli import main


def test_export_info_and_generate(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(tiny_model_dirs["gpt2"]), "--out", str(out), "--quant", "q8"]) == 0
    assert capsys.readouterr().out.strip() == str(out)

    assert main(["bundle", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"]["bits"] == 8 and len(info["bundle_id"]) == 16

    code = main(["generate", "--bundle", str(out), "--prompt", "Hello there", "--seed", "1", "--max-new-tokens", "6"])
    captured = capsys.readouterr()
    assert code == 0
    assert "tokens, first token" in captured.err


def test_errors_exit_2_with_the_path_named(tmp_path, capsys):
    assert main(["generate", "--bundle", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    assert f"{tmp_path / 'missing'}: bundle directory does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    assert "no such model directory" in capsys.readouterr().err
