"""The one-command demo on the committed reference MLLM and export."""
from pathlib import Path

from PIL import Image

from predictor.runtime.demo import main


def test_demo_defaults_answer_prune_and_draw(tmp_path, capsys):
    out = tmp_path / "kept.png"
    assert main(["--out", str(out), "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "all 64 visual tokens:  'cross'" in text  # docs/example.png: the pink object is a cross
    assert "kept 16 of 64 (25.0%):  'cross'" in text and "time: prefill " in text
    assert Image.open(out).size[0] > 200 and f"kept tokens: {out}" in text


def test_demo_budget_and_bad_inputs(tmp_path, capsys):
    assert main(["--budget", "8", "--out", str(tmp_path / "k.png"), "--max-new-tokens", "2"]) == 0
    assert "kept 8 of 64 (12.5%)" in capsys.readouterr().out
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["--image", str(tmp_path / "bad.png"), "--question", "What?"]) == 1
    assert f"--image {tmp_path / 'bad.png'}: cannot read it as an image" in capsys.readouterr().err
    assert main(["--predictor", str(tmp_path / "none"), "--out", str(tmp_path / "k.png")]) == 1
    assert "no such folder, and not a hub repo id" in capsys.readouterr().err
