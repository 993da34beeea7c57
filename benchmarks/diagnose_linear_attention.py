"""How much does gae's rollout carry through a hybrid decoder's linear-attention layers?

    python benchmarks/diagnose_linear_attention.py --model checkpoints/reference-qwen3_5 --n 40

gae's rollout multiplies a row vector by (I + A_bar_l) at each layer, A_bar_l = mean_heads(rule(dScore/dA * A)).
With explainer.linear_layers=implicit, a Gated DeltaNet layer's A is the implicit attention of its gated delta
rule (data_gen/explainers/linear_attention.py); with residual its factor is I. For the correctly answered
scenes of bench_explainers (same draw) this prints, per decoder layer, the row sum of A_bar (what the layer adds
beside the residual path's 1) at the answer rows and its largest over all rows, and how the implicit labels
differ from the residual ones (largest difference / largest label, same top token, Spearman).
"""
from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from data_gen.explainers import get_explainer
from data_gen.explainers._common import answer_scores
from data_gen.explainers.reference import linear_as_matrix

from _answered import answered, scene_source


def _rank(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def run(model: str, n: int, size=(224, 224), seed: int = 0, rule: str = "abs") -> dict:
    from predictor.adapters import load_adapter

    adapter = load_adapter("qwen3_5", model)
    source = scene_source(model, n, seed=seed, sizes=[list(size)])
    answer_row, any_row = {}, {}
    diffs, same_top, spearman = [], 0, []
    done = 0
    for _, _, _, p, ids in tqdm(answered(adapter, source, n, max_new_tokens=8), total=n, desc="scenes"):
        ids = ids.reshape(-1)
        s, n_t = p.seq_len, ids.numel()
        implicit: dict[int, torch.Tensor] = {}
        with torch.enable_grad():
            embeds = adapter.embed(p, ids).detach().requires_grad_(True)
            with linear_as_matrix(adapter, implicit):
                out = adapter.teacher_forced(p, ids, output_attentions=True, inputs_embeds=embeds)
            atts = {i: a if a is not None else implicit[i] for i, a in enumerate(out.attentions)}
            scores = answer_scores(out.logits[:, s - 1:s - 1 + n_t], ids, "logit")[0]
            for t in range(n_t):
                grads = torch.autograd.grad(scores[t], list(atts.values()), retain_graph=True)
                for (layer, a), g in zip(atts.items(), grads):
                    prod = g[0] * a[0]
                    a_bar = (prod.clamp_min(0) if rule == "positive" else prod.abs()).mean(0).sum(-1)  # row sums
                    answer_row.setdefault(layer, []).append(float(a_bar[s - 1 + t]))
                    any_row[layer] = max(any_row.get(layer, 0.0), float(a_bar.max()))
        residual = get_explainer("gae")(rule=rule)(adapter, p, ids)
        imp = get_explainer("gae")(rule=rule, linear_layers="implicit")(adapter, p, ids)
        diffs.append(float((imp - residual).abs().max() / residual.max()))
        same_top += int(imp.argmax() == residual.argmax())
        spearman.append(float(torch.corrcoef(torch.stack([_rank(imp), _rank(residual)]))[0, 1]))
        done += 1
    types = adapter.language_model().config.layer_types
    return {"scenes": done, "layers": {layer: {"type": types[layer],
                                               "answer_row_mean": sum(v) / len(v), "answer_row_max": max(v),
                                               "any_row_max": any_row[layer]} for layer, v in answer_row.items()},
            "max_diff": max(diffs), "mean_diff": sum(diffs) / len(diffs), "same_top": same_top,
            "min_spearman": min(spearman), "mean_spearman": sum(spearman) / len(spearman)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="checkpoints/reference-qwen3_5")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rule", default="abs", choices=["abs", "positive"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    r = run(a.model, a.n, seed=a.seed, rule=a.rule)
    print(f"{r['scenes']} scenes; row sums of A_bar (the residual path adds 1):")
    print("| layer | type | answer rows, mean | answer rows, max | any row, max |\n|---|---|---:|---:|---:|")
    for layer, v in r["layers"].items():
        print(f"| {layer} | {v['type']} | {v['answer_row_mean']:.4f} | {v['answer_row_max']:.4f} | "
              f"{v['any_row_max']:.4f} |")
    print(f"implicit vs residual labels: largest difference / largest label {r['max_diff']:.2e} (mean "
          f"{r['mean_diff']:.2e}); same top token in {r['same_top']} / {r['scenes']}; Spearman min "
          f"{r['min_spearman']:.4f}, mean {r['mean_spearman']:.4f}")


if __name__ == "__main__":
    main()
