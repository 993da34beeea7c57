"""A kernel integration that swaps layers' forwards at load time cannot bypass our layer-0 q/k path or the
capture attention.

transformers 5.25 kernelizes every model at `from_pretrained` when the `kernels` package is installed (a
dependency of transformers now): hub kernels replace the `forward` of the layers its decorators name (RMSNorm,
rotary) per instance. On a GPU with hub access that happens to our users' models. Here a stand-in kernel is
installed the same way, by transformers' own load path (its `kernelize` call), and it changes the norm's
numbers on purpose: a path that recomputed the norm itself, instead of running the model's module, would
then differ from the eager forward of the same model.
"""
from __future__ import annotations

from types import MethodType

import pytest
import torch
import transformers
from packaging.version import Version

from models import ADAPTER_OF, FAMILIES, tiny_image, tiny_models  # noqa: F401  (fixture)
from predictor.adapters import ADAPTERS, load_adapter
from predictor.adapters.attention import capture

INSTRUCTION = "What shape is the red object?"
KERNELIZES_AT_LOAD = Version(transformers.__version__) >= Version("5.25")


class StandInRMSNorm(torch.nn.Module):
    """A 'kernel' for layers decorated with use_kernel_forward_from_hub("RMSNorm"): the same norm, with a
    different scale, and a call counter, so that whether it ran is visible in the numbers and the count."""

    calls = 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        StandInRMSNorm.calls += 1
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (1.25 * self.weight * x).to(hidden_states.dtype)


class StandInZeroCenteredRMSNorm(torch.nn.Module):
    """The same for use_kernel_forward_from_hub("RMSNormZeroCentered") (Qwen3.5: scale 1 + weight)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        StandInRMSNorm.calls += 1
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (1.25 * (1.0 + self.weight.float()) * x).to(hidden_states.dtype)


STAND_INS = {"RMSNorm": StandInRMSNorm, "RMSNormZeroCentered": StandInZeroCenteredRMSNorm}


def _kernelize(model, **_):
    """What kernels.kernelize does for a matching layer: bind the kernel layer's forward to the instance."""
    for module in model.modules():
        # transformers' decorator names the layer; releases without the kernels integration have none, and
        # there the class name says it
        name = getattr(type(module), "kernel_layer_name", None) or type(module).__name__.removeprefix("_")
        if name in STAND_INS:
            module.forward = MethodType(STAND_INS[name].forward, module)
        elif not KERNELIZES_AT_LOAD and name.endswith("RMSNorm"):
            # Qwen3.5's zero-centred norm (scale 1 + weight, `eps`) is the one without `variance_epsilon`
            zero_centred = hasattr(module, "eps") and not hasattr(module, "variance_epsilon")
            stand_in = StandInZeroCenteredRMSNorm if zero_centred else StandInRMSNorm
            module.forward = MethodType(stand_in.forward, module)


@pytest.fixture
def kernelized(monkeypatch):
    import transformers.modeling_utils as mu

    if KERNELIZES_AT_LOAD:  # through transformers' own load-time call, as users get it
        monkeypatch.setattr(mu, "kernelize", _kernelize)
        monkeypatch.setattr(mu, "is_kernels_available", lambda: True, raising=False)

    def load(family, path, **kw):
        adapter = ADAPTERS.get(ADAPTER_OF[family]).load(str(path), **kw)
        if not KERNELIZES_AT_LOAD:  # older releases kernelize only when asked: do it as they would
            _kernelize(adapter.model)
        return adapter
    return load


@pytest.mark.parametrize("family", FAMILIES)
def test_layer0_and_capture_run_the_models_kernelized_layers(family, tiny_models, kernelized):
    adapter = kernelized(family, tiny_models[family])
    norm = adapter.language_model().layers[0].input_layernorm
    assert norm.forward.__func__ in {c.forward for c in STAND_INS.values()}, "the load did not install the kernel"
    p = adapter.prepare(tiny_image(), INSTRUCTION)

    StandInRMSNorm.calls = 0
    per_head, mean = adapter.layer0_attention(p)
    assert StandInRMSNorm.calls > 0, "layer 0's q/k path bypassed the model's (kernelized) norm"
    probe = adapter.probe_layer
    with torch.no_grad(), capture(adapter.attention_layers(), mode="record", stop_after=probe) as cap:
        adapter.language_model()(inputs_embeds=adapter.embed(p), use_cache=False, attention_mask=None,
                                 position_ids=adapter.position_ids(p))
    captured = cap.probs[probe][0][:, p.instruction_positions][:, :, p.visual_positions].mean(1).float()

    eager = kernelized(family, tiny_models[family], attn_implementation="eager")
    with torch.no_grad():
        att = eager.model(**p.inputs, output_attentions=True).attentions[0][0]  # (H, S, S), the probe layer
    expect = att[:, p.instruction_positions][:, :, p.visual_positions].mean(1)
    torch.testing.assert_close(per_head, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mean, expect.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(captured, expect, atol=1e-6, rtol=1e-5)

    # the stand-in really changes the numbers: the plain model's layer 0 is another one
    plain = load_adapter(ADAPTER_OF[family], str(tiny_models[family]))
    for m in plain.model.modules():
        m.__dict__.pop("forward", None)  # back to the class's forward, as kernels' reset does
    assert (plain.layer0_attention(p)[0] - per_head).abs().max() > 1e-4
