"""One evaluation run (what `python eval.py` does): settings -> results.json, results.md, plots.

For every method (predictor, oracle, layer-0 attention, random, downsampling, cluster aggregation)
and keep ratio: accuracy of pruned generation, accuracy retained relative to the unpruned model,
visual tokens kept, prefill time and KV-cache size. Also the predictor's fidelity to the oracle on
held-out shards, the same evaluation with more visual tokens than in training (sources that can
scale), and the instruction-swap check. Resumable: re-running with the same `out` and settings
evaluates only the items not yet in `out/items-*.jsonl` (`eval-settings.json` guards the settings).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evaluation.aggregate import (aggregate, aggregate_swap, generalisation_scales, headline, swap_table,
                                  table_heading)
from evaluation.fidelity import HeldOut, fidelity_section, held_out
from evaluation.items import ItemSettings, evaluate_records
from evaluation.records import skipped_line, skipped_summary
from predictor.media import DEFAULT_MAX_PIXELS

log = logging.getLogger("eval")


@dataclass
class EvalSettings:
    """Everything one evaluation needs (the keys of conf/eval.yaml; see the comments there)."""

    model: dict[str, Any]  # conf/model/: adapter, path, dtype, device, attn_implementation
    source: dict[str, Any]  # conf/source/: name + options
    explainer: dict[str, Any] = field(default_factory=lambda: {"name": "gae"})  # the oracle
    predictor: str | None = None  # the export folder, or a hub repo id (through the local HF cache)
    out: str = "outputs/eval/run"
    methods: list[str] = field(default_factory=lambda: ["predictor", "oracle", "attention", "random",
                                                        "downsample", "cluster"])
    keeps: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    max_items: int = 200
    max_new_tokens: int = 16
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_video_pixels: int | None = 2 * DEFAULT_MAX_PIXELS
    correctness: str = "auto"
    timing: bool = True
    figures: int = 6
    seed: int = 0
    swap_keep: float | None = 0.125
    allow_modality_mismatch: bool = False  # score prompts of the modality the predictor was not trained on
    allow_version_change: bool = False  # resume out= under another torch/transformers version
    progress: bool = True
    fidelity: dict[str, Any] = field(default_factory=dict)  # {shards, val_only, val_fraction}
    generalisation: dict[str, Any] = field(default_factory=dict)  # {max_items, scales}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalSettings":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KeyError(f"unknown eval setting(s) {unknown}; available: {', '.join(sorted(names))}")
        return cls(**d)

    def item_settings(self, figures_dir: Path | None = None) -> ItemSettings:
        return ItemSettings(max_new_tokens=self.max_new_tokens, correctness=self.correctness, timing=self.timing,
                            swap_keep=self.swap_keep, max_pixels=self.max_pixels,
                            max_video_pixels=self.max_video_pixels, figures=self.figures,
                            figures_dir=figures_dir)


def _check(s: EvalSettings) -> None:
    """Settings that would fail only at the first item (or the first answer) fail now."""
    from data_gen.correctness import MODES
    from predictor.runtime import METHODS

    unknown = [m for m in s.methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown} in methods=; available: {list(METHODS)}")
    if s.correctness not in MODES:
        raise ValueError(f"correctness={s.correctness!r}: expected one of {', '.join(MODES)}")
    if ("predictor" in s.methods or s.fidelity.get("shards")) and not s.predictor:
        raise ValueError("methods include 'predictor' (or fidelity.shards is set) but predictor= is not set; "
                         "pass predictor=<export dir>")


def _guarded(s: EvalSettings, settings_file: Path, model_dir: str, scales: dict[str, Any],
             predictor: Path | None) -> None:
    """Items already evaluated in out/ are reused only if they were made the same way; max_items may
    grow (more items are evaluated), figures and progress do not matter."""
    from data_gen.build import model_fingerprint, recorded_explainer
    from data_gen.settings_guard import check_same_settings
    from predictor.versions import versions

    check_same_settings(settings_file, {
        "versions": versions(), "model": {k: v for k, v in s.model.items() if k != "path"}, "model_fingerprint": model_fingerprint(model_dir),
        "predictor_fingerprint": model_fingerprint(str(predictor)) if predictor is not None else None,
        "explainer": recorded_explainer(s.explainer) if "oracle" in s.methods else None, "source": s.source, "generalisation": scales,
        "methods": list(s.methods), "keeps": sorted(float(k) for k in s.keeps), "max_new_tokens": s.max_new_tokens,
        "correctness": s.correctness, "timing": s.timing, "seed": s.seed, "swap_keep": s.swap_keep,
        "max_pixels": s.max_pixels, "max_video_pixels": s.max_video_pixels,
        "allow_modality_mismatch": s.allow_modality_mismatch},
        why="Its per-item results (items-*.jsonl) would be mixed with results made another way.",
        allow_version_change=s.allow_version_change)


def run_eval(s: EvalSettings) -> dict[str, Any]:
    """Evaluate per `s`; writes out/results.json, results.md, retained*.png, figures/ and returns what
    results.json holds. The results are written as soon as the main table is done and again after each
    later step (generalisation scales, fidelity), so no later step can lose them; the fidelity check
    is optional and never fails the run (a problem with it is a line in the results). A first start
    that fails before any item is on disk removes the eval-settings.json it wrote, so the corrected
    command is not refused as "other settings"."""
    from data_gen.build import build_adapter, build_explainer, build_source, resolve_model_path
    from data_gen.lock import WriterLock
    from predictor.export import load_export
    from predictor.hub import resolve_export
    from predictor.runtime import make_method

    _check(s)
    pred_model, export_cfg, pred_dir = None, {}, None
    if s.predictor and ("predictor" in s.methods or s.fidelity.get("shards") is not False):
        pred_dir = resolve_export(s.predictor)  # a folder, or a hub id's cached snapshot
        pred_model = load_export(pred_dir)
        export_cfg = pred_model.export_config
    # explicit fidelity settings that cannot give held-out samples fail now, not after every item
    held = held_out(export_cfg, s.fidelity, str(pred_dir) if pred_dir is not None else None)
    model_dir = resolve_model_path(str(s.model["path"]))  # a local folder, or the HF-cache snapshot of a repo id
    adapter = build_adapter(s.model)
    src = build_source(s.source, adapter)  # bad source settings fail here, before anything is written
    scales, no_scales = generalisation_scales(src, s.source.get("name"), s.generalisation)
    expl = build_explainer(s.explainer)[0] if "oracle" in s.methods else None

    def methods():  # fresh per run: random pruning restarts from its seed
        return {m: make_method(m, predictor=pred_model, explainer=expl, seed=s.seed, max_new_tokens=s.max_new_tokens,
                               allow_modality_mismatch=s.allow_modality_mismatch)
                for m in s.methods}

    out_dir = Path(s.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one evaluation per out=: a second one would append the same items to items-*.jsonl
    lock = WriterLock(str(out_dir / ".lock"), str(out_dir)).acquire()
    settings_file = out_dir / "eval-settings.json"
    fresh = not settings_file.is_file()
    try:
        _guarded(s, settings_file, model_dir, scales, pred_dir)
        res, md = _evaluate(s, adapter, src, methods, out_dir)
        _write(out_dir, res, md)
        md = _generalise(s, adapter, methods, scales, no_scales, out_dir, res, md)
        _write(out_dir, res, md)
        md += _fidelity(s, pred_model, export_cfg, held, res)
        _write(out_dir, res, md)
    except BaseException:
        if fresh and not any(f.stat().st_size for f in out_dir.glob("items-*.jsonl")):
            settings_file.unlink(missing_ok=True)  # nothing was made with these settings: nothing to guard
        raise
    finally:
        lock.release()
    print(md, flush=True)
    wrote = sorted(p.name + "/" * p.is_dir() for p in out_dir.iterdir() if not p.name.startswith("."))
    print(f"wrote {out_dir}/: {', '.join(wrote)}", flush=True)  # every output, resumed ones too
    print(f"{headline(res['results'], list(s.methods))} -> {out_dir / 'results.md'}", flush=True)  # the last line
    return res


def _write(out_dir: Path, res: dict[str, Any], md: str) -> None:
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(md)


def _evaluate(s: EvalSettings, adapter, src, methods, out_dir: Path) -> tuple[dict[str, Any], str]:
    """The main table on `src` -> (results, markdown)."""
    from predictor.runtime.report import legend, markdown_table, plot_retained

    keeps_desc = sorted({float(k) for k in s.keeps}, reverse=True)
    res: dict[str, Any] = {"model": s.model, "source": s.source, "predictor": s.predictor, "keeps": list(s.keeps)}
    recs = evaluate_records(adapter, src, methods(), s.keeps, s.max_items, s.item_settings(out_dir / "figures"),
                            records=out_dir / "items-eval.jsonl", desc="eval", progress=s.progress)
    res["skipped"] = skipped_summary(recs)
    res["results"] = aggregate(recs, list(s.methods), keeps_desc, s.timing)
    md = markdown_table(res["results"], table_heading(s.model, s.source))
    md += skipped_line(res["skipped"], "items-eval.jsonl") + "\n" + legend()
    plot_retained(res["results"], out_dir / "retained.png")
    res["swap"] = aggregate_swap(recs)
    if res["swap"]:
        md += "\n" + swap_table(res["swap"], s.swap_keep)
    return res, md


def _generalise(s: EvalSettings, adapter, methods, scales: dict[str, Any], no_scales: str | None, out_dir: Path,
                res: dict[str, Any], md: str) -> str:
    """One table per generalisation scale, added to `res` -> the markdown so far."""
    from data_gen.build import build_source
    from predictor.runtime.report import markdown_table, plot_retained

    keeps_desc = sorted({float(k) for k in s.keeps}, reverse=True)
    if no_scales:
        log.info("generalisation to more visual tokens skipped: %s", no_scales)
        res["generalisation_skipped"] = no_scales
        md += f"\ngeneralisation to more visual tokens: skipped, {no_scales}\n"
    for name, overrides in scales.items():
        g_src = {**s.source, **dict(overrides)}
        g_recs = evaluate_records(adapter, build_source(g_src, adapter), methods(), s.keeps,
                                  int(s.generalisation.get("max_items", s.max_items)), s.item_settings(),
                                  records=out_dir / f"items-eval-{name}.jsonl", desc=f"eval-{name}",
                                  progress=s.progress)
        r = aggregate(g_recs, list(s.methods), keeps_desc, s.timing)
        g = {"source": g_src, "results": r, "swap": aggregate_swap(g_recs), "skipped": skipped_summary(g_recs)}
        res.setdefault("generalisation", {})[name] = g
        md += "\n" + markdown_table(r, table_heading(s.model, g_src, (name, overrides)))
        md += skipped_line(g["skipped"], f"items-eval-{name}.jsonl")
        if g["swap"]:
            md += "\n" + swap_table(g["swap"], s.swap_keep)
        plot_retained(r, out_dir / f"retained-{name}.png", title=f"generalisation {name}")
    return md


def _fidelity(s: EvalSettings, pred_model, export_cfg: dict[str, Any], held: HeldOut | str,
              res: dict[str, Any]) -> str:
    """The fidelity table, or one line saying why there is none. Optional: a problem with the shards
    (unreadable, no held-out sample) becomes that line, never a failed run."""
    why = held if isinstance(held, str) else None
    if why is None:
        try:
            res["fidelity"], md = fidelity_section(pred_model, export_cfg, held, s.progress)
            res["fidelity_samples"] = held.what
            return md
        except (OSError, ValueError) as e:  # the shards' problem; a bug still raises (the results are on disk)
            why = f"failed: {e}"
            log.warning("fidelity to the oracle %s", why)
    else:
        log.info("fidelity to the oracle skipped: %s", why)
    res["fidelity_skipped"] = why
    return f"\nfidelity to the oracle: skipped, {why}\n"
