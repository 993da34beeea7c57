"""The one-command demo on the committed reference MLLM and export."""
import os
from pathlib import Path

from PIL import Image

from predictor.runtime.demo import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_defaults_answer_prune_and_draw_under_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a user runs it: the figure goes under outputs/, not next to their files
    assert main(["--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "all 64 visual tokens:  'cross'" in text  # docs/example.png: the pink object is a cross
    assert "kept 16 of 64 (25.0%):  'cross'" in text and "time: prefill " in text
    out = Path("outputs") / "demo" / "kept-tokens.png"
    assert os.listdir(tmp_path) == ["outputs"] and f"kept tokens: {out}" in text
    assert Image.open(out).size[0] > 200


def test_demo_out_may_name_a_new_folder(tmp_path, capsys):
    out = tmp_path / "new" / "kept.png"
    assert main(["--out", str(out), "--max-new-tokens", "2"]) == 0
    assert Image.open(out).size[0] > 200 and f"kept tokens: {out}" in capsys.readouterr().out


def test_demo_budget_and_bad_inputs(tmp_path, capsys):
    assert main(["--budget", "8", "--out", str(tmp_path / "k.png"), "--max-new-tokens", "2"]) == 0
    assert "kept 8 of 64 (12.5%)" in capsys.readouterr().out
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["--image", str(tmp_path / "bad.png"), "--question", "What?"]) == 1
    assert f"--image {tmp_path / 'bad.png'}: cannot read it as an image" in capsys.readouterr().err
    assert main(["--predictor", str(tmp_path / "none"), "--out", str(tmp_path / "k.png")]) == 1
    assert "no such folder, and not a hub repo id" in capsys.readouterr().err


def test_demo_gives_a_large_image_data_gens_token_count(tmp_path):
    """The demo caps an image as data_gen (and eval, lmms-eval) do, not through the processor's own cap,
    which rounds to another grid: at 1920x1080 a Qwen2-VL gives 1008 tokens through its processor and 1032
    after `cap_pixels`, so a predictor would prune at another token count than it was labelled at."""
    import json
    import shutil

    from data_gen.build import build_adapter
    from predictor.media import cap_pixels, load_image
    from data_gen.config import DataGenConfig
    from predictor.runtime.demo import prepare_input

    mllm = tmp_path / "mllm"  # the reference MLLM with Qwen2-VL-7B's processor cap (12845056 px), as a real one
    shutil.copytree(ROOT / "checkpoints" / "reference-qwen2vl", mllm)
    cfg = json.loads((mllm / "processor_config.json").read_text())
    cfg["image_processor"]["size"]["longest_edge"] = 12845056
    (mllm / "processor_config.json").write_text(json.dumps(cfg))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (1920, 1080), (90, 120, 40)).save(photo)

    _, _, demo = prepare_input(str(photo), "What is this?", "qwen2_vl", str(mllm), "cpu")
    adapter = build_adapter({"adapter": "qwen2_vl", "path": str(mllm), "device": "cpu"})  # data_gen's loading
    labelled = adapter.prepare(cap_pixels(load_image(str(photo)), DataGenConfig().max_pixels), "What is this?")
    assert labelled.num_visual == 1032  # (as data_gen's process_item prepares an image)
    assert demo.num_visual == labelled.num_visual and tuple(demo.grid) == tuple(labelled.grid)


def test_demo_runs_a_vila_folder(tmp_path, capsys):
    """`--model vila --model-path <VILA1.5 folder>`: answers, prunes and draws VILA's 3 x 3 token grid."""
    from models import tiny_model_dir
    from predictor.config import PredictorConfig
    from predictor.export import save_predictor
    from predictor.model import RelevancePredictor

    export = save_predictor(RelevancePredictor(PredictorConfig(widths=[4, 8], inputs=["attn", "coords"])),
                            tmp_path / "export")
    out = tmp_path / "kept.png"
    assert main(["--model", "vila", "--model-path", str(tiny_model_dir("vila", tmp_path)), "--predictor", str(export),
                 "--question", "What shape is the red object?", "--out", str(out), "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "all 9 visual tokens:" in text and "kept 3 of 9" in text and Image.open(out).size[0] > 200
