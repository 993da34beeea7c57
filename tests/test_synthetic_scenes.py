import json

import numpy as np
import pytest

from data_gen.sources import SOURCES, get_source
from data_gen.sources.synthetic_scenes import SyntheticScenes
from reference_mllm import scenes


def test_registered():
    assert get_source("synthetic_scenes") is SyntheticScenes
    assert "synthetic_scenes" in SOURCES


def test_deterministic_and_independent_of_order():
    a = SyntheticScenes(num_items=20, seed=3, sizes=[[224, 224], [224, 448]])
    b = SyntheticScenes(num_items=20, seed=3, sizes=[[224, 224], [224, 448]])
    for i in (7, 0, 19, 7):  # any order, any repetition: item i depends only on (seed, split, i)
        x, y = a[i], b[i]
        assert (x.id, x.instruction, x.answer, x.extra) == (y.id, y.instruction, y.answer, y.extra)
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
    other_seed = SyntheticScenes(num_items=20, seed=4, sizes=[[224, 224], [224, 448]])
    assert any(np.asarray(a[i].image).shape != np.asarray(other_seed[i].image).shape
               or not np.array_equal(np.asarray(a[i].image), np.asarray(other_seed[i].image)) for i in range(5))


def test_splits_are_disjoint_streams():
    train = SyntheticScenes(num_items=5, split="train")
    held = SyntheticScenes(num_items=5, split="heldout")
    for i in range(5):
        assert train[i].id != held[i].id
        assert not np.array_equal(np.asarray(train[i].image), np.asarray(held[i].image))


@pytest.mark.parametrize("placement,radius", [("cell", (8, 12)), ("free", (16, 28))])
@pytest.mark.parametrize("size", [(224, 224), (224, 448), (336, 168)])
def test_ground_truth_matches_drawn_pixels(size, placement, radius):
    """Recompute each item's relevance from the pixels of the target's exact fill colour."""
    source = SyntheticScenes(num_items=12, seed=1, sizes=[size], placement=placement, radius=radius,
                             num_objects=(16, 24) if placement == "cell" else (3, 6))
    for i in range(len(source)):
        item = source[i]
        img = np.asarray(item.image)
        assert img.shape == (*size, 3)
        t, h, w = item.extra["grid"]
        assert (t, h, w) == (1, size[0] // 28, size[1] // 28)
        target = item.extra["objects"][item.extra["target"]]
        mask = np.all(img == np.asarray(target["fill"], dtype=np.uint8), axis=-1)
        assert mask.sum() > 100, "the target must be visible"
        counts = mask.reshape(h, 28, w, 28).sum(axis=(1, 3)).reshape(-1)
        rel = np.asarray(item.extra["gt_relevance"])
        assert rel.shape == (h * w,)
        np.testing.assert_allclose(rel, counts / counts.sum(), atol=2e-6)
        # the answer is a property of that object, and the question names it uniquely
        q = item.instruction
        if item.extra["question_type"] == "shape":
            assert item.answer == target["shape"] and f" {target['colour']} " in q
            assert sum(o["colour"] == target["colour"] for o in item.extra["objects"]) == 1
        else:
            assert item.answer == target["colour"] and f" {target['shape']}?" in q
            assert sum(o["shape"] == target["shape"] for o in item.extra["objects"]) == 1
        # the swap question's ground truth is its own object's pixels too
        swap = item.extra["swap"]
        other = item.extra["objects"][swap["target"]]
        mask = np.all(img == np.asarray(other["fill"], dtype=np.uint8), axis=-1)
        counts = mask.reshape(h, 28, w, 28).sum(axis=(1, 3)).reshape(-1)
        np.testing.assert_allclose(swap["gt_relevance"], counts / counts.sum(), atol=2e-6)
        json.dumps(item.extra)  # goes into shard metadata


def test_every_question_names_one_object_by_a_unique_attribute_and_asks_the_other():
    """Over many default scenes: each of the two questions names its object by a colour (or shape) that no
    other object has, asks for the other attribute, and the two questions name different objects;
    distractors repeat colours and shapes; scenes hold more objects than 25% of the tokens."""
    source = SyntheticScenes(num_items=300, seed=5, split="test")
    kinds, counts, repeats = set(), [], 0
    for i in range(len(source)):
        s = source.scene(i)
        assert len(s.questions) == 2 and s.questions[0].target != s.questions[1].target
        for q in s.questions:
            obj = s.objects[q.target]
            named, asked = ("colour", "shape") if q.kind == "shape" else ("shape", "colour")
            assert q.word == getattr(obj, named) and q.answer == getattr(obj, asked)
            assert [getattr(o, named) for o in s.objects].count(q.word) == 1
            assert q.text == ("What shape is the {} object?" if q.kind == "shape" else "What colour is the {}?").format(q.word)
            kinds.add(q.kind)
        counts.append(len(s.objects))
        repeats += len({o.colour for o in s.objects}) < len(s.objects)
    assert kinds == {"shape", "colour"}
    assert min(counts) == 16 and max(counts) == 24  # the default 16-24: more than the 16 tokens kept at 25%
    assert repeats == len(source)  # 16+ objects, 10 colours: distractors always share colours


def test_the_source_its_config_and_the_reference_model_share_one_set_of_scene_defaults():
    """SyntheticScenes() in Python, conf/source/synthetic_scenes.yaml and the committed reference MLLM's
    training scenes are the same thing, so the source as a user builds it asks what the model answers."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    default = scenes.SceneConfig().to_dict()
    conf = yaml.safe_load((root / "conf/source/synthetic_scenes.yaml").read_text())
    assert {k: conf[k] for k in default} == default
    assert SyntheticScenes().config == scenes.SceneConfig()
    record = json.loads((root / "checkpoints/reference-qwen2vl/training.json").read_text())
    assert record["config"]["scenes"] == default


def test_cell_placement_keeps_each_object_inside_one_token():
    """The default: every object's pixels fall in one visual token's cell, a different one per object,
    at varying offsets and sizes within it."""
    source = SyntheticScenes(num_items=20, seed=3, num_objects=(3, 4))
    offsets, radii = set(), set()
    for i in range(len(source)):
        s = source.scene(i)
        cells = []
        for obj in s.objects:
            counts = scenes.cell_counts(scenes.object_mask(obj, s.height, s.width)).reshape(-1)
            assert (counts > 0).sum() == 1, obj
            cells.append(int(counts.argmax()))
            offsets.add((obj.cx % 28, obj.cy % 28))
            radii.add(obj.r)
        assert len(set(cells)) == len(cells)
        assert sorted(np.asarray(source[i].extra["gt_relevance"]).round(6).tolist())[-1] == 1.0
    assert len(offsets) > 10 and radii == {8, 9, 10, 11, 12}


def test_token_labels_follow_the_objects():
    source = SyntheticScenes(num_items=4, seed=2)
    for i in range(4):
        s = source.scene(i)
        colour, shape = scenes.token_labels(s)
        img = np.asarray(s.image)
        for k, obj in enumerate(s.objects):
            cid = list(scenes.COLOURS).index(obj.colour) + 1
            mask = np.all(img == np.asarray(obj.fill, dtype=np.uint8), axis=-1)
            share = mask.reshape(8, 28, 8, 28).sum(axis=(1, 3)).reshape(-1) / 28 ** 2
            assert colour[share.argmax()] == cid  # the token most covered by an object carries its label
            assert shape[share.argmax()] == scenes.SHAPES.index(obj.shape) + 1
        assert (colour == 0).sum() > len(colour) // 2  # most tokens are background


def test_bad_config_says_what_to_do():
    with pytest.raises(ValueError, match="multiples of 28"):
        SyntheticScenes(sizes=[[230, 224]])
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(split="validation")
    with pytest.raises(ValueError, match="question type"):
        SyntheticScenes(question_types=["count"])[0]
    with pytest.raises(IndexError):
        SyntheticScenes(num_items=2)[2]
    with pytest.raises(ValueError, match="placement='free' for larger objects"):
        SyntheticScenes(radius=[16, 28])
    with pytest.raises(ValueError, match="placement"):
        SyntheticScenes(placement="grid")
    with pytest.raises(ValueError, match=r"num_objects=\[5, 2\]"):
        SyntheticScenes(num_objects=[5, 2])


def test_default_cell_is_28_px_and_unchanged_by_the_option():
    """The 28 px default (the reference MLLMs') draws byte for byte what it drew before token_px existed."""
    default, explicit = SyntheticScenes(), SyntheticScenes(token_px=28)
    for i in range(3):
        a, b = default[i], explicit[i]
        assert a.image.tobytes() == b.image.tobytes() and a.extra == b.extra and a.extra["grid"] == [1, 8, 8]


def test_32_px_cells_for_qwen3_vl():
    """A 32 px family (Qwen3-VL) gets scenes in its own cells: 256 x 256 px is 8 x 8 tokens, each object inside
    one 32 px cell, the ground truth per 32 px cell; a size that is no multiple of 32 is refused."""
    src = SyntheticScenes(sizes=[[256, 256]], token_px=32)
    for i in range(5):
        item, scene = src[i], src.scene(i)
        assert item.extra["grid"] == [1, 8, 8] and len(item.extra["gt_relevance"]) == 64
        cells = set()
        for obj in scene.objects:  # every pixel of an object in one cell, no two objects in one cell
            ys, xs = np.nonzero(scenes.object_mask(obj, 256, 256))
            assert len({(y // 32, x // 32) for y, x in zip(ys, xs)}) == 1
            cells.add((ys[0] // 32, xs[0] // 32))
        assert len(cells) == len(scene.objects)
        target = scene.objects[scene.target]
        assert int(np.argmax(item.extra["gt_relevance"])) == (target.cy // 32) * 8 + target.cx // 32
    with pytest.raises(ValueError, match=r"multiples of 32 px.*source.sizes=\[\[256,256\]\]"):
        SyntheticScenes(sizes=[[224, 252]], token_px=32)  # 252 = 9 x 28, not a multiple of 32


def test_two_image_and_multi_turn_modes():
    """two_images: the named object in one image, alternately the first and the second, its naming word absent
    from the other image, ground truth over both images' tokens; multi_turn: the scene's second question after
    the first's answer, the previous question's ground truth kept for the swap check across turns."""
    two = SyntheticScenes(split="test", mode="two_images")
    single = SyntheticScenes(split="test")
    for i in range(4):
        it, s = two[i], single.scene(i)
        assert it.instruction == s.question and it.answer == s.answer
        parts = it.messages[0]["content"]
        assert [p["type"] for p in parts] == ["image", "image", "text"] and parts[2]["text"] == s.question
        target = i % 2
        assert it.extra["target_image"] == target
        gt = np.asarray(it.extra["gt_relevance"])
        assert gt.shape == (128,) and gt[64 * target:64 * (target + 1)].sum() == pytest.approx(1, abs=1e-4)
        assert gt[64 * (1 - target):64 * (2 - target)].sum() == 0
        other = single.scene(it.extra["partner"])
        attr = "colour" if s.question_type == "shape" else "shape"
        assert all(getattr(o, attr) != getattr(s.objects[s.target], attr) for o in other.objects)
    turns = SyntheticScenes(split="test", mode="multi_turn")
    it, s = turns[0], single.scene(0)
    assert [m["role"] for m in it.messages] == ["user", "assistant", "user"]
    assert it.messages[1]["content"] == s.answer and it.instruction == s.questions[1].text
    assert it.answer == s.questions[1].answer and it.extra["previous"]["instruction"] == s.question
    with pytest.raises(ValueError, match="source.mode"):
        SyntheticScenes(mode="three")


def test_eval_refuses_chat_items_instead_of_evaluating_their_first_image():
    from evaluation.items import ItemSettings, load_media

    with pytest.raises(ValueError, match="bench_multi_prompt"):
        load_media(SyntheticScenes(split="test", mode="multi_turn")[0], ItemSettings())


@pytest.mark.parametrize("mode", ["two_images", "multi_turn"])
def test_the_chat_reference_model_trains_on_the_sources_prompts(mode):
    """`python -m reference_mllm.train --chat` and its held-out accuracy use `reference_mllm.prompts`, and so does
    the source's mode: the same messages, images and answers for the same (seed, split, index)."""
    from reference_mllm.train import heldout_items

    asked = heldout_items(0, [224, 224], 3, scenes.SceneConfig().to_dict(), kind=mode)
    source = SyntheticScenes(split="heldout", mode=mode)
    for i, a in enumerate(asked):
        item = source[i]
        assert (a.instruction, a.answer) == (item.instruction, item.answer)
        assert [m["role"] for m in a.messages] == [m["role"] for m in item.messages]
        pixels = [p["image"].tobytes() for m in item.messages if not isinstance(m["content"], str)
                  for p in m["content"] if p["type"] == "image"]
        assert pixels == [im.tobytes() for im in a.image]
