"""Evaluation outputs: the Markdown table, the retained-accuracy plot, kept-token figures.

results: {method: {keep (str, e.g. "0.25"): {"accuracy", "retained", "visual_tokens", ...}}}
"""
from __future__ import annotations

from pathlib import Path

import torch

# (results key, column, format, what it means)
COLUMNS = (("accuracy", "acc", "{:.3f}", "share of the items answered correctly"),
           ("retained", "retained", "{:.1%}", "acc / the same method's acc at keep 1 (the unpruned model)"),
           ("visual_tokens", "visual tokens", "{:.1f}", "visual tokens the LLM saw, mean per item"),
           ("object_kept", "object kept", "{:.1%}", "share of the items whose most relevant token by ground "
                                                    "truth was kept (- : no ground truth, or downsampling)"),
           ("prefill_ms", "prefill ms", "{:.2f}", "LLM forward over the prompt, batch 1, mean per item"),
           ("kv_cache_kib", "KV cache KiB", "{:.1f}", "KV cache after the prompt, mean per item"))


def legend() -> str:
    """What the columns of `markdown_table` mean."""
    lines = ["method: how the visual tokens are chosen (keep 1: none dropped); keep: share of the visual tokens "
             "kept (downsample: a smaller image with that share of the tokens)"]
    return "Columns: " + "; ".join(lines + [f"{name}: {what}" for _, name, _, what in COLUMNS]) + ".\n"


def markdown_table(results: dict[str, dict[str, dict[str, float]]], title: str = "") -> str:
    """One row per (method, keep ratio), methods in insertion order, keep ratios descending; the
    heading names the number of items."""
    head = "| method | keep | " + " | ".join(c[1] for c in COLUMNS) + " |"
    n = max((r["n"] for per_keep in results.values() for r in per_keep.values()), default=0)
    heading = f"{title}: {n} items" if title else f"{n} items"
    lines = [f"### {heading}", "", head, "|" + "---|" * (len(COLUMNS) + 2)]
    for method, per_keep in results.items():
        for keep in sorted(per_keep, key=float, reverse=True):
            r = per_keep[keep]
            cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt, _ in COLUMNS]
            lines.append(f"| {method} | {float(keep):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_retained(results: dict[str, dict[str, dict[str, float]]], path: str | Path, title: str = "") -> Path:
    """Retained accuracy (fraction of the unpruned model's) against keep ratio, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, per_keep in results.items():
        keeps = sorted(per_keep, key=float)
        ax.plot([float(k) for k in keeps], [per_keep[k]["retained"] for k in keeps], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("visual tokens kept (fraction)")
    ax.set_ylabel("accuracy retained (fraction of unpruned)")
    ax.set_title(title or "pruned generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def kept_overlay(image, grid: tuple[int, int, int], kept: dict[str, torch.Tensor], path: str | Path,
                 title: str = "", token_px: int = 28, correct: dict[str, bool] | None = None) -> Path | None:
    """The image once per method, dropped visual tokens darkened. kept: {method: (N_v,) bool} in
    raster order of the (t, h, w) grid (first frame shown). token_px: side of one token's cell, the
    adapter's `token_px` (default 28, Qwen2-VL's). correct: {method: whether its pruned answer was
    right}, marked in each panel's title and frame. Returns None if the grid does not tile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t, h, w = grid
    img = np.asarray(image.convert("RGB").resize((w * token_px, h * token_px))).astype(np.float32) / 255
    n = len(kept)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    for ax, (name, mask) in zip(axes[0], kept.items()):
        if mask.numel() != t * h * w:
            plt.close(fig)
            return None
        m = mask.reshape(t, h, w)[0].float().numpy()
        shade = np.kron(m, np.ones((token_px, token_px)))[..., None]
        ax.imshow(img * (0.25 + 0.75 * shade))
        right = None if correct is None else correct.get(name)
        mark = "" if right is None else (" - correct" if right else " - wrong")
        ax.set_title(f"{name} ({int(mask.sum())}/{mask.numel()}){mark}", fontsize=7,
                     color={True: "darkgreen", False: "darkred", None: "black"}[right])
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():  # a green or red frame: the answer with these tokens was right or wrong
            spine.set(visible=right is not None, linewidth=3, color="darkgreen" if right else "darkred")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.text(0.5, 0.01, "bright: visual tokens kept, dark: dropped" +
             ("; green frame: answered correctly from the kept tokens, red: wrongly" if correct else ""),
             ha="center", fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
