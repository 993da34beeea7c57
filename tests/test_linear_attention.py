"""gae through a hybrid decoder's linear-attention layers (Qwen3.5's Gated DeltaNet): the implicit attention
matrix of the gated delta rule, and gae's linear_layers option (data_gen/explainers/linear_attention.py)."""
import pytest
import torch

from data_gen.explainers import get_explainer
from data_gen.explainers.linear_attention import (_kernel, gated_delta_inputs, implicit_attention, implicit_layers,
                                                  linear_attention_layers)
from data_gen.explainers.reference import reference_gae
from models import tiny_image, tiny_models  # noqa: F401  (fixture)
from predictor.adapters import load_adapter
from predictor.adapters.attention import capture

ANSWER = torch.tensor([5, 7, 9, 11])


@pytest.fixture(scope="module")
def qwen35(tiny_models):
    adapter = load_adapter("qwen3_5", str(tiny_models["qwen3_5"]))
    return adapter, adapter.prepare(tiny_image(), "What shape is the red object?")


def _layer_inputs(adapter, n=150, seed=0):  # > 2 chunks of the kernel (64 tokens)
    layers = linear_attention_layers(adapter)
    assert sorted(layers) == [0, 2]  # the tiny model: linear, softmax, linear, softmax
    module = layers[0]
    x = torch.randn(1, n, module.hidden_size, generator=torch.Generator().manual_seed(seed))
    return module, x, gated_delta_inputs(module, x)


def _unrolled(q, k, g, beta):
    """A[h, t, s] = beta_s q_t^T M_t ... M_{s+1} k_s, M_r = exp(g_r) (I - beta_r k_r k_r^T), written out
    token by token (the derivation in linear_attention.py), q/k l2-normalised as the layer does (x / sqrt(|x|^2 +
    1e-6)) and q scaled by d ** -0.5."""
    rep = g.shape[-1] // q.shape[2]
    q, k = ((x.float() * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + 1e-6)).repeat_interleave(rep, dim=2)[0]
            for x in (q, k))
    q = q * q.shape[-1] ** -0.5
    g, beta = g[0].float(), beta[0].float()
    n, h, d = q.shape
    a = torch.zeros(h, n, n)
    eye = torch.eye(d)
    for head in range(h):
        for s in range(n):
            vec = beta[s, head] * k[s, head]  # M_t ... M_{s+1} k_s beta_s, built from t = s upwards
            for t in range(s, n):
                if t > s:
                    kt = k[t, head]
                    vec = g[t, head].exp() * (eye - beta[t, head] * torch.outer(kt, kt)) @ vec
                a[head, t, s] = q[t, head] @ vec
    return a


def test_implicit_attention_reproduces_the_layer_core_output(qwen35):
    adapter, _ = qwen35
    module, x, (q, k, v, z, g, beta) = _layer_inputs(adapter)
    core, _ = _kernel()(q, k, v, g=g, beta=beta, use_qk_l2norm_in_kernel=True)  # what the layer computes
    a = implicit_attention(q, k, g, beta)
    assert a.shape == (1, g.shape[-1], x.shape[1], x.shape[1])
    assert torch.equal(a.triu(1), torch.zeros_like(a))  # causal
    torch.testing.assert_close(torch.einsum("bhts,bshd->bthd", a, v.float()), core.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(a[0], _unrolled(q, k, g, beta), atol=1e-5, rtol=0)
    # and the inputs are the layer's own: its forward from them is its output
    out = module.out_proj(module.norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
                          .reshape(1, x.shape[1], -1))
    torch.testing.assert_close(out, module(x), atol=1e-6, rtol=0)


def test_carrier_forward_computes_the_layers_output_and_restores_it(qwen35):
    adapter, _ = qwen35
    module, x, _ = _layer_inputs(adapter)
    want = module(x)
    carry = torch.zeros(1, x.shape[1], requires_grad=True)
    with capture(adapter.attention_layers(), mode="recompute", rule="abs", carry=carry) as cap:
        with implicit_layers(adapter, cap) as layers:
            got = module(x)
    assert layers == [0, 2] and cap.carried == [0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert "forward" not in module.__dict__  # the class's forward again


@pytest.mark.parametrize("rule", ["positive", "abs"])
def test_gae_implicit_equals_full_matrix_reference(rule, qwen35):
    """The carrier's A_bar (dScore/dA from the core output's gradient and v) against autograd's dScore/dA with A
    in the graph (core = A @ v) and the full S x S rollout."""
    adapter, p = qwen35
    ours = get_explainer("gae")(rule=rule, linear_layers="implicit")(adapter, p, ANSWER)
    ref = reference_gae(adapter, p, ANSWER, rule=rule, linear_layers="implicit")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_implicit_changes_the_labels_and_residual_does_not(qwen35):
    adapter, p = qwen35
    residual = get_explainer("gae")()(adapter, p, ANSWER)
    implicit = get_explainer("gae")(linear_layers="implicit")(adapter, p, ANSWER)
    assert (implicit - residual).abs().max() > 1e-3 * residual.max()
    # residual is what gae computed before the option existed: the rollout over the softmax layers alone
    torch.testing.assert_close(get_explainer("gae")(linear_layers="residual")(adapter, p, ANSWER), residual,
                               atol=0, rtol=0)
    ref = reference_gae(adapter, p, ANSWER, rule="abs")
    torch.testing.assert_close(residual, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
    assert not torch.allclose(implicit, ref, rtol=1e-4, atol=1e-4 * float(ref.max()))


def test_linear_layers_option_is_checked():
    with pytest.raises(ValueError, match=r"linear_layers='matrix'.*\('residual', 'implicit'\)"):
        get_explainer("gae")(linear_layers="matrix")


def test_implicit_on_a_family_without_linear_layers_is_plain_gae(tiny_models):
    adapter = load_adapter("qwen2_vl", str(tiny_models["qwen2_vl"]))
    p = adapter.prepare(tiny_image(), "What shape is the red object?")
    torch.testing.assert_close(get_explainer("gae")(linear_layers="implicit")(adapter, p, ANSWER),
                               get_explainer("gae")()(adapter, p, ANSWER), atol=0, rtol=0)


def test_bench_explainers_takes_an_explainers_options():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explainers.py"
    spec = importlib.util.spec_from_file_location("bench_explainers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    made = bench._make("gae:linear_layers=implicit,chunk=4")
    assert (made.linear_layers, made.chunk, made.rule) == ("implicit", 4, "abs")
    assert bench._make("gae").linear_layers == "residual"
    with pytest.raises(ValueError, match="key=value"):
        bench._make("gae:implicit")


def test_folders_labelled_before_the_option_resume_with_residual_only(tmp_path):
    """labeller.json of a folder made before linear_layers existed records no such key: the default (residual,
    the same labels) resumes it, implicit is refused."""
    from data_gen.config import DataGenConfig
    from data_gen.labeller import check_same_labeller, labeller_settings

    (tmp_path / "config.json").write_text("{}")
    model, cfg = {"path": str(tmp_path)}, DataGenConfig(out=str(tmp_path / "out"))
    check_same_labeller(cfg.out, labeller_settings(model, str(tmp_path), "qwen2_vl", {"name": "gae", "rule": "abs"}, cfg))
    check_same_labeller(cfg.out, labeller_settings(model, str(tmp_path), "qwen2_vl",
                                                   {"name": "gae", "rule": "abs", "linear_layers": "residual"}, cfg))
    with pytest.raises(ValueError, match="linear_layers"):
        check_same_labeller(cfg.out, labeller_settings(model, str(tmp_path), "qwen2_vl",
                                                       {"name": "gae", "rule": "abs", "linear_layers": "implicit"}, cfg))
