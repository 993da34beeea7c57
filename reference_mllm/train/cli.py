"""`python -m reference_mllm.train [options]`: the command line over `RefTrainConfig`."""
from __future__ import annotations

import argparse
import json

from reference_mllm.train.config import (ARCHS, CHAT_OUT, DEFAULT_OUT, VIDEO_OUT, RefTrainConfig, chat_config,
                                         qwen3_5_config, video_config)
from reference_mllm.train.loop import train


def main(argv: list[str] | None = None) -> None:
    from reference_mllm.train import __doc__ as doc

    p = argparse.ArgumentParser(prog="python -m reference_mllm.train", description=doc.split("\n\n")[0])
    p.add_argument("--video", action="store_true",
                   help=f"train the video reference model on synthetic_video clips (config.video_config; default "
                        f"--out {VIDEO_OUT}, --steps {video_config().steps})")
    p.add_argument("--arch", choices=ARCHS, default="qwen2_vl",
                   help="qwen3_5: the Qwen3.5-architecture (hybrid decoder) reference model, config.qwen3_5_config "
                        "(default --out checkpoints/reference-qwen3_5)")
    p.add_argument("--chat", action="store_true",
                   help=f"train the chat reference model on a mix of single-image, two-image and two-turn prompts, "
                        f"from the committed reference model's weights (config.chat_config; default --out {CHAT_OUT}, "
                        f"--steps {chat_config().steps})")
    p.add_argument("--mix", default="", help='prompt kinds and their shares, e.g. "single=0.4,two_images=0.25,'
                                             'multi_turn=0.35" (default: only single; --chat: its mix)')
    p.add_argument("--init", default=None, help="start from this saved reference model (same vocabulary; default: "
                                                f"from scratch, --chat: {DEFAULT_OUT})")
    p.add_argument("--out", default=None, help=f"default: {DEFAULT_OUT} (--video: {VIDEO_OUT}, --chat: {CHAT_OUT}, "
                                               f"--arch qwen3_5: checkpoints/reference-qwen3_5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None,
                   help=f"default: {RefTrainConfig.steps} (--video: {video_config().steps}, --chat: {chat_config().steps})")
    p.add_argument("--eval-items", type=int, default=RefTrainConfig.eval_items)
    p.add_argument("--threads", type=int, default=RefTrainConfig.threads)
    p.add_argument("--l0-cue", type=float, default=RefTrainConfig.l0_cue,
                   help="layer-0 instruction cue: head 0's mass from the naming word on the object, pushed up to "
                        "this (0: off)")
    p.add_argument("--l0-position-bias", type=float, default=RefTrainConfig.l0_position_bias,
                   help="layer-0 position bias: slope of log attention against the image row, pushed up to this "
                        "(0: off)")
    p.add_argument("--text", default="", help='JSON overrides of the text config, e.g. \'{"hidden_size": 128}\'')
    p.add_argument("--sizes", default="", help="training image sizes HxW, e.g. 224x224 (default: the config's mix)")
    a = p.parse_args(argv)
    extra = {}
    if a.video and a.arch != "qwen2_vl":
        p.error("--video trains the Qwen2-VL video reference model; --arch qwen3_5 is image only")
    if a.chat and a.arch != "qwen2_vl":
        p.error("--chat continues the committed Qwen2-VL reference model; --arch qwen3_5 is single-image only")
    if a.video and a.chat:
        p.error("--video and --chat are two recipes: pick one")
    recipe = (video_config if a.video else chat_config if a.chat else qwen3_5_config if a.arch == "qwen3_5"
              else RefTrainConfig)
    if a.text:
        extra["text"] = {**recipe().text, **json.loads(a.text)}
    if a.sizes:
        extra["sizes"] = [[int(v) for v in x.split("x")] for x in a.sizes.split(",")]
        extra["size_weights"] = [1.0] * len(extra["sizes"])
    if a.mix:
        extra["prompt_mix"] = {k: float(v) for k, v in (x.split("=") for x in a.mix.split(","))}
    extra.update({k: v for k, v in (("out", a.out), ("steps", a.steps), ("init", a.init)) if v is not None})
    cfg = recipe(seed=a.seed, eval_items=a.eval_items, threads=a.threads, l0_cue=a.l0_cue,
                 l0_position_bias=a.l0_position_bias, **extra)
    record = train(cfg)
    print(f"saved {cfg.out}: {record['steps']} steps in {record['train_seconds'] / 60:.1f} min")
    for size, acc in record["heldout_accuracy"].items():
        print(f"held-out accuracy at {size}: {acc * 100:.1f}% ({record['heldout_items_per_size']} prompts)")
