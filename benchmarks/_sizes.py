"""What the speed benchmarks share: random Qwen2-VL language models at real sizes built directly on the
device, their matmul FLOPs, and the device's bf16 peak to compare achieved FLOP/s with.

Speed does not depend on the weights, so random weights at a real model's shapes time that model.
"""
from __future__ import annotations

import contextlib

import torch

# Qwen2-VL-2B/7B language models (config.json of the released checkpoints); "tiny" is the CPU test size
SIZES = {
    "small": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=512),  # bench_datagen's CPU default, the size BENCHMARKS.md reports
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128),
    "2b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
               intermediate_size=8960),
    "7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944),
}

# dense bf16 tensor-core peaks, FLOP/s (NVIDIA datasheets; no sparsity), matched in this order against
# torch.cuda.get_device_name()
BF16_PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
              ("A100", 312e12))


def check_size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"--size {size!r}; expected one of {', '.join(SIZES)}")
    return SIZES[size]


def bf16_peak(device: str, dtype: torch.dtype) -> float | None:
    """The device's dense bf16 peak, or None where a comparison means nothing (CPU, fp32, unknown GPU)."""
    if not device.startswith("cuda") or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def flops_text(flops: float, seconds: float, peak: float | None) -> str:
    """'123.4 TFLOP/s (12% of bf16 peak)', or '... (peak n/a)'."""
    rate = flops / seconds
    share = f"{rate / peak:.0%} of bf16 peak" if peak else "peak n/a"
    return f"{rate / 1e12:.2f} TFLOP/s ({share})"


def linear_params(cfg: dict) -> int:
    """Weights of one decoder layer's matmuls (q, k, v, o and the gated MLP)."""
    d, kv = cfg["hidden_size"], cfg["num_key_value_heads"] * cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * d * d + 2 * d * kv + 3 * d * cfg["intermediate_size"]


def prefill_flops(cfg: dict, seq: int, batch: int = 1) -> float:
    """Matmul FLOPs of a causal prefill: the layers' linears plus q.k and attention x v over the causal
    half (what SDPA's flash kernels compute); the lm head at one position is left out."""
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    return batch * n * (2.0 * seq * linear_params(cfg) + 2.0 * seq * seq * d)


def gae_flops(cfg: dict, seq: int, answer: int) -> float:
    """Matmul FLOPs of gae (one forward, one backward per answer token, no weight gradients): the fp32
    attention computes the full (S, S) matrices (2 products), its backward recomputes the probabilities,
    then 4 more (S, S) x d products (grad probs, grad v, grad q, grad k)."""
    n, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    forward = n * (2.0 * seq * linear_params(cfg) + 4.0 * seq * seq * d)
    backward = n * (2.0 * seq * linear_params(cfg) + 10.0 * seq * seq * d)
    return forward + answer * backward


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_qwen2_vl(size: str | dict, device: str, dtype: torch.dtype, max_pixels: int, attn: str = "fp32_capture",
                    name: str | None = None):
    """Qwen2-VL adapter over a random model with the language model `size` (a name of SIZES or a text
    config) and a tiny vision tower (the benchmarks time the LLM), allocated and initialised on `device`
    in `dtype` (a 7B model never passes through host memory in fp32)."""
    from reference_mllm.tiny_models import DEFAULT_WORDS, make_qwen2_vl
    from predictor.adapters import get_adapter
    from predictor.adapters.attention import ATTN_IMPL, register

    with torch.device(device), default_dtype(dtype):
        text = size if isinstance(size, dict) else check_size(size)
        model, processor = make_qwen2_vl(list(DEFAULT_WORDS), text=text, max_pixels=max_pixels)
    if attn == ATTN_IMPL:
        register()
    model.set_attn_implementation(attn)
    model = model.to(device=device, dtype=dtype).eval()
    return get_adapter("qwen2_vl")(model, processor, f"random-{name or size}")
