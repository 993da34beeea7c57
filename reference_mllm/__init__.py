"""The reference MLLMs: tiny multimodal models with a known ground truth, for testing the pipeline on a CPU.

A second product beside the pipeline (predictor, data_gen, evaluation): data_gen's synthetic sources, the tests
and the benchmarks use it; it imports nothing of data_gen or evaluation (an import-linter contract), only the
`predictor` library below both, whose adapters define the inputs the models are trained on.

    drawing.py      shapes, colours, the rasteriser and the visual-token cells scenes and clips share
    scenes.py       drawn scenes and their questions (`make_scene`), per-token ground truth
    clips.py        drawn video clips whose answer is in only some frames (`make_clip`)
    streams.py      item i of a split as a pure function of (seed, split, i)
    tokenizer.py    the word-level tokenizer and chat templates of the tiny models
    tiny_models.py  tiny random MLLMs in real HF families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision)
    train/          training the committed reference models: python -m reference_mllm.train [--video]
"""
