"""Train the reference MLLM: a small Qwen2-VL, from scratch, on `synthetic_scenes`.

    python -m reference_mllm.train                    # -> checkpoints/reference-qwen2vl/
    python -m reference_mllm.train --steps 200 --out /tmp/ref   # a quick look
    python -m reference_mllm.train --video            # -> checkpoints/reference-qwen2vl-video/
    python -m reference_mllm.train --chat             # -> checkpoints/reference-qwen2vl-chat/

`--video` (`config.video_config`) trains a second model, on `synthetic_video` clips, with the same recipe:
video tokens stand where image tokens stood (pixel_values_videos, video_grid_thw) and the named object's
tokens are those of the frame pairs it is visible in.

`--chat` (`config.chat_config`) continues the committed model (`init`, same vocabulary) on a mix of prompt kinds
(`prompt_mix`, `--mix`): single images, two images with the question about one of them, and two-turn
conversations (`reference_mllm.prompts`, the prompts of `synthetic_scenes`' `two_images` and `multi_turn` modes),
the chat template rendering the history; only the last answer is learnt, and the losses read the last user turn.

The model is transformers' own `Qwen2VLForConditionalGeneration` (built by `reference_mllm.tiny_models`),
trained on the chat-template prompt + answer + `<|im_end|>`, so greedy generation through the
`qwen2_vl` adapter answers and stops. Deterministic given `--seed` (same threads, same machine).
The scenes are `synthetic_scenes`' defaults (`reference_mllm.scenes.SceneConfig`), recorded in the saved
training.json, so the source as a user builds it asks what the model answers.

What makes a model this small learn in minutes (BENCHMARKS.md has the runs):
- scenes with each object inside one visual token's cell (`synthetic_scenes`' default placement);
- an auxiliary loss: a head on the merged vision features predicts the colour and shape of the
  object under each visual token (or background), so the vision tower has a signal of its own;
- attention guidance (-log attention mass) on head 0 of text layers 1 and 2: the question's naming
  word attends to that object's tokens, the answer position to the word;
- text weights initialised with std 0.1, not transformers' 0.02.
Layer 0, whose attention the relevance predictor reads, gets at most a weak cue (`l0_cue`).
The auxiliary head is dropped when saving: the saved folder is a plain Qwen2-VL.

Files: config.py (the recipe), batches.py (scenes -> batches), losses.py, loop.py (training and
held-out evaluation), card.py (the model card), cli.py.
"""
from reference_mllm.train.batches import chat_prompt, heldout_items, make_batch
from reference_mllm.train.cli import main
from reference_mllm.train.config import CHAT_OUT, DEFAULT_OUT, VIDEO_OUT, RefTrainConfig, chat_config, video_config
from reference_mllm.train.loop import evaluate, train

__all__ = ["CHAT_OUT", "DEFAULT_OUT", "VIDEO_OUT", "chat_config", "RefTrainConfig", "video_config", "chat_prompt", "evaluate", "heldout_items", "main", "make_batch", "train"]
