"""What an exported predictor is worth at inference: pruned generation against the oracle and the
baselines (`python eval.py` is the thin Hydra entry over `run_eval`).

    run.py        EvalSettings + run_eval: one evaluation run, results.json / results.md / plots
    items.py      ItemEvaluator: every method at every keep ratio on one item -> one record
    records.py    the per-item records file (resume, skipped items)
    aggregate.py  records -> tables (retained accuracy, costs, instruction swap), generalisation scales
    fidelity.py   the predictor vs the oracle on held-out shards

It sits above both `predictor` (the runtime it measures) and `data_gen` (sources, explainers,
correctness), so that neither of those imports it.
"""
from evaluation.aggregate import aggregate, aggregate_swap, generalisation_scales, swap_table
from evaluation.items import ItemEvaluator, ItemSettings, evaluate_items, evaluate_records
from evaluation.records import read_records
from evaluation.run import EvalSettings, run_eval

__all__ = ["EvalSettings", "run_eval", "ItemEvaluator", "ItemSettings", "evaluate_items", "evaluate_records",
           "aggregate", "aggregate_swap", "generalisation_scales", "swap_table", "read_records"]
