"""The synthetic video source: the named object is visible in only some frames, and its ground truth
per (t, h, w) video token can be recomputed from the drawn frames."""
import numpy as np
import pytest

from data_gen.sources.base import get_source
from reference_mllm.clips import TEMPORAL_PATCH, ClipConfig

TOKEN = 28


def _fill_pixels(frame, fill) -> np.ndarray:
    """(h, w) bool: pixels of this exact fill (each object's fill is unique in its clip)."""
    return (np.asarray(frame) == np.array(fill)).all(-1)


def _gt_from_frames(frames, fill, grid) -> np.ndarray:
    t, h, w = grid
    counts = np.zeros((t, h, w))
    for f, frame in enumerate(frames):
        m = _fill_pixels(frame, fill)
        counts[f // TEMPORAL_PATCH] += m.reshape(h, TOKEN, w, TOKEN).sum(axis=(1, 3))
    return (counts / counts.sum()).reshape(-1)


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_named_object_is_in_some_frames_and_its_ground_truth_follows_the_pixels(split):
    src = get_source("synthetic_video")(split=split, sizes=[[112, 112], [112, 168]])
    for i in range(6):
        item = src[i]
        ex = item.extra
        t, h, w = ex["grid"]
        assert item.modality == "video" and len(item.video) == 8 and t == 4 and (h, w) in ((4, 4), (4, 6))
        named = ex["objects"][ex["target"]]
        assert item.instruction == f"What shape was the {named['colour']} object?" and item.answer == named["shape"]
        assert sum(o["colour"] == named["colour"] for o in ex["objects"]) == 1  # the colour names one object
        seen = [f for f, frame in enumerate(item.video) if _fill_pixels(frame, named["fill"]).any()]
        assert seen == ex["target_frames"] and len(seen) == 2 and seen[1] == seen[0] + 1
        gt = np.array(ex["gt_relevance"])
        assert gt.shape == (t * h * w,) and gt.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(gt, _gt_from_frames(item.video, named["fill"], (t, h, w)), atol=1e-5)
        in_time = gt.reshape(t, h * w).sum(1) > 0
        assert set(np.flatnonzero(in_time)) == {f // TEMPORAL_PATCH for f in seen}
        other = ex["swap"]
        assert other["target"] != ex["target"] and other["answer"] == ex["objects"][other["target"]]["shape"]
        assert not np.allclose(np.array(other["gt_relevance"]), gt)


def test_items_are_pure_functions_of_seed_split_index():
    make = get_source("synthetic_video")
    a, b = make(split="test")[3], make(split="test")[3]
    assert a.id == b.id and a.extra == b.extra
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.video, b.video))
    assert make(split="heldout")[3].extra != a.extra and make(split="test", seed=1)[3].extra != a.extra


def test_distractors_move_between_frames():
    item = get_source("synthetic_video")(split="test", num_objects=[8, 8])[0]
    frames = [np.asarray(f).astype(int) for f in item.video]
    assert any(np.abs(frames[f] - frames[f + 1]).sum() > 0 for f in range(7))
    moving = 0
    for k, obj in enumerate(item.extra["objects"]):
        if k in (item.extra["target"], item.extra["swap"]["target"]):
            continue
        where = [tuple(np.argwhere(_fill_pixels(f, obj["fill"])).mean(0).round()) for f in item.video]
        moving += len(set(where)) > 1
    assert moving >= 4  # of 6 distractors (a distractor may draw the same cell twice)


def test_the_processor_lays_the_clip_out_as_the_ground_truth_does():
    """Qwen2-VL's video processor (the committed reference model's): frame pairs of 28 px cells."""
    from PIL import Image  # noqa: F401  (PIL frames)
    from transformers import AutoProcessor

    from data_gen.build import PROJECT_ROOT

    proc = AutoProcessor.from_pretrained(str(PROJECT_ROOT / "checkpoints" / "reference-qwen2vl"))
    item = get_source("synthetic_video")(split="test", sizes=[[112, 168]])[0]
    thw = proc.video_processor(videos=[item.video], return_tensors="pt")["video_grid_thw"][0].tolist()
    merge = proc.video_processor.merge_size
    assert [thw[0], thw[1] // merge, thw[2] // merge] == item.extra["grid"] == [4, 4, 6]


@pytest.mark.parametrize("kw,match", [({"num_frames": 7}, "multiple of 2"), ({"target_frames": 8}, "target_frames"),
                                      ({"num_objects": [1, 3]}, "two named objects")])
def test_bad_clip_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        ClipConfig(**kw)


def test_no_distractor_shares_a_named_objects_token():
    """A video token merges a frame pair: in the pairs a named object shows in, its cell holds no other object
    in either frame, so its tokens never mix it with a distractor."""
    from reference_mllm.clips import make_clip

    for seed in range(30):
        clip = make_clip(np.random.default_rng(seed), 112, 112, ClipConfig(num_objects=(10, 10)))
        for q in clip.questions:
            cell = next(p for p in clip.tracks[q.target] if p is not None)
            cell = (cell[1] // TOKEN, cell[0] // TOKEN)
            for f in range(len(clip.frames)):
                if f // TEMPORAL_PATCH not in {v // TEMPORAL_PATCH for v in q.frames}:
                    continue
                for k, track in enumerate(clip.tracks):
                    if k != q.target and track[f] is not None:
                        assert (track[f][1] // TOKEN, track[f][0] // TOKEN) != cell, (seed, f, k)


def test_32_px_cells_for_qwen3_vl():
    """Clips in 32 px cells: the ground truth follows the pixels in 32 px cells, as the Qwen3-VL processor tiles them."""
    src = get_source("synthetic_video")(sizes=[[128, 128]], token_px=32)
    item, clip = src[0], src.clip(0)
    assert item.extra["grid"] == [4, 4, 4] and len(item.extra["gt_relevance"]) == 64
    target = clip.objects[item.extra["target"]]
    t = item.extra["target_frames"][0] // TEMPORAL_PATCH
    cy, cx = next(p for p in clip.tracks[item.extra["target"]] if p is not None)[::-1]
    assert target.r <= 12 and int(np.argmax(item.extra["gt_relevance"])) == t * 16 + (cy // 32) * 4 + cx // 32
