"""Targets and metrics against hand-computed values and scipy."""
import math

import pytest
import torch
from scipy.stats import spearmanr

from predictor.metrics import kl_div, relevance_metrics, spearman, topk_recall
from predictor.targets import make_target, num_kept, topk_mask


def test_num_kept():
    assert num_kept(10, 0.5) == 5 and num_kept(9, 0.5) == 5 and num_kept(1, 0.125) == 1
    assert num_kept(8, 0.125) == 1 and num_kept(64, 0.25) == 16
    assert num_kept(torch.tensor([10, 9, 1]), 0.5).tolist() == [5, 5, 1]


def test_make_target_hand_computed():
    rel = torch.tensor([[0.1, 0.4, 0.2, 0.3, 9.0]])
    mask = torch.tensor([[True, True, True, True, False]])  # 9.0 is padding: never kept
    t = make_target(rel, mask, keep=0.5)  # keep 2 of 4: 0.4 and 0.3
    torch.testing.assert_close(t, torch.tensor([[0.0, 0.4 / 0.7, 0.0, 0.3 / 0.7, 0.0]]))
    t = make_target(rel, mask, keep=1.0)
    torch.testing.assert_close(t, torch.tensor([[0.1, 0.4, 0.2, 0.3, 0.0]]))
    # all-zero oracle -> uniform over the kept (first, by position) tokens
    t = make_target(torch.zeros(1, 4), torch.ones(1, 4, dtype=torch.bool), keep=0.5)
    torch.testing.assert_close(t, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="keep ratio"):
        topk_mask(rel, mask, 0.0)


def test_kl_hand_computed():
    t = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    torch.testing.assert_close(kl_div(t, p, mask), torch.tensor([math.log(2)]))
    torch.testing.assert_close(kl_div(t, t, mask), torch.tensor([0.0]))


def test_spearman_matches_scipy_with_ties_and_padding():
    torch.manual_seed(0)
    a = torch.randint(0, 5, (3, 20)).float()  # many ties
    b = torch.randn(3, 20)
    lens = [20, 13, 7]
    mask = torch.arange(20)[None] < torch.tensor(lens)[:, None]
    ours = spearman(a, b, mask)
    for i, n in enumerate(lens):
        ref = spearmanr(a[i, :n].numpy(), b[i, :n].numpy()).statistic
        assert abs(float(ours[i]) - ref) < 1e-5
    assert float(spearman(torch.ones(1, 5), torch.randn(1, 5), torch.ones(1, 5, dtype=torch.bool))) == 0.0


def test_topk_recall_hand_computed():
    oracle = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    pred = torch.tensor([[8.0, 0.0, 6.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.ones(1, 8, dtype=torch.bool)
    # top-4 oracle {0,1,2,3}; top-4 pred {0,2,3, then 1 (first 0.0 by position)} -> all 4
    assert float(topk_recall(pred, oracle, mask, 0.5)) == 1.0
    # top-2 oracle {0,1}; pred {0,2} -> 1/2
    assert float(topk_recall(pred, oracle, mask, 0.25)) == 0.5
    assert float(topk_recall(pred, oracle, mask, 0.125)) == 1.0
    m = relevance_metrics(pred.softmax(-1), oracle, make_target(oracle, mask), mask)
    assert set(m) == {"kl", "spearman", "recall@50", "recall@25", "recall@12.5"}
    assert float(m["recall@25"]) == 0.5


def test_random_scores_hit_chance():
    torch.manual_seed(0)
    oracle = torch.rand(400, 64)
    mask = torch.ones(400, 64, dtype=torch.bool)
    r = topk_recall(torch.rand(400, 64), oracle, mask, 0.25).mean()
    assert abs(float(r) - 0.25) < 0.02


def test_instruction_swap_scores_the_selection_that_follows_the_question():
    from predictor.metrics import instruction_swap

    a, b = torch.tensor([2, 2, 2]), torch.tensor([5, 5, 5])  # each row: question 1 names token 2, question 2 token 5
    fixed = torch.zeros(3, 8, dtype=torch.bool)
    fixed[:, [2, 5, 6]] = True  # keeps both objects, whatever the question: blind to it
    named_a, named_b = torch.zeros(3, 8, dtype=torch.bool), torch.zeros(3, 8, dtype=torch.bool)
    named_a[:, 2], named_b[:, 5] = True, True
    r = instruction_swap(fixed, fixed, a, b)
    assert r["own"].all() and not r["changed"].any() and not r["swap"].any()
    r = instruction_swap(named_a, named_b, a, b)
    assert r["changed"].all() and r["own"].all() and r["swap"].all()
    r = instruction_swap(named_b, named_a, a, b)  # follows the question, but to the wrong object
    assert r["changed"].all() and not r["own"].any() and not r["swap"].any()


def test_keep_ratio_counts_agree_everywhere():
    """Training targets, metrics (tensor path) and the runtime (int path) keep the same count for a ratio:
    ceil of the exact product (0.3 * 170 = 51, not float32's 52)."""
    from predictor.runtime import budget_for
    from predictor.targets import num_kept

    n = torch.arange(1, 301)
    for keep in (0.5, 0.25, 0.125, 0.3, 0.1, 1 / 3):
        counts = num_kept(n, keep)
        assert counts.tolist() == [num_kept(int(v), keep) for v in n] == [budget_for(int(v), keep, None) for v in n]
    assert num_kept(170, 0.3) == 51 and num_kept(torch.tensor([170]), 0.3).item() == 51 and num_kept(30, 0.1) == 3
