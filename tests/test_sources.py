import json

import pytest
from PIL import Image

from data_gen.images import ImageError, cap_pixels, load_image
from data_gen.sources.base import SOURCES, get_source


def _image(path, size=(56, 28), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_registry_lists_sources():
    get_source("jsonl")
    assert {"jsonl", "llava_json", "hf_dataset"} <= set(SOURCES.names())
    with pytest.raises(KeyError, match="available: .*jsonl"):
        get_source("nope")


def test_jsonl(tmp_path):
    _image(tmp_path / "a.png")
    lines = [
        {"id": "q1", "image": "a.png", "instruction": "What colour?", "answer": "red"},
        {"image": "a.png", "instruction": "What shape?", "answer": "square"},
        "not json",
        {"image": "a.png", "answer": "x"},
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n\n")
    src = get_source("jsonl")(path=str(tmp_path / "items.jsonl"))
    assert len(src) == 4
    a, b = src[0], src[1]
    assert (a.id, a.instruction, a.answer) == ("q1", "What colour?", "red")
    assert a.image == str(tmp_path / "a.png") and load_image(a.image).size == (56, 28)
    again = get_source("jsonl")(path=str(tmp_path / "items.jsonl"))[1]
    assert b.id == again.id and b.id != a.id and len(b.id) == 16  # content hash: stable across runs
    with pytest.raises(ValueError, match="line 3"):
        src[2]
    with pytest.raises(ValueError, match="instruction"):
        src[3]
    with pytest.raises(FileNotFoundError, match="source.path"):
        get_source("jsonl")(path=str(tmp_path / "missing.jsonl"))


def test_llava_json(tmp_path):
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "x.jpg")
    records = [
        {"id": "r1", "image": "x.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A square."},
            {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "r2", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "r1", "image": ["x.jpg"], "conversations": [
            {"from": "human", "value": "Describe <image>"}, {"from": "gpt", "value": "red"}]},
    ]
    (tmp_path / "conv.json").write_text(json.dumps(records))
    src = get_source("llava_json")(path=str(tmp_path / "conv.json"), image_root=str(tmp_path / "imgs"))
    assert len(src) == 3  # text-only record left out; two turns of r1; one of the repeated id
    ids = [src[i].id for i in range(3)]
    assert ids == ["r1-0", "r1-1", "r1-r2-0"] and len(set(ids)) == 3
    assert src[0].instruction == "What is this?" and src[0].answer == "A square."
    assert src[2].instruction == "Describe"
    assert load_image(src[1].image).size == (56, 28)


def test_hf_dataset(tmp_path):
    import datasets  # in the data_gen extra
    img = Image.new("RGB", (28, 28), (0, 0, 255))
    ds = datasets.Dataset.from_dict({
        "img": [img, img], "q": ["What colour?", "Is it blue?"], "a": [["blue", "navy"], ["yes"]],
    }).cast_column("img", datasets.Image())
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "vqa"))
    src = get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="validation", image_column="img",
                                   instruction_column="q", answer_column="a")
    assert len(src) == 2
    item = src[0]
    assert (item.id, item.instruction, item.answer) == ("vqa-0", "What colour?", "blue")
    assert load_image(item.image).getpixel((3, 3)) == (0, 0, 255)
    with pytest.raises(KeyError, match="columns"):
        get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="validation", image_column="nope")
    with pytest.raises(KeyError, match="validation"):
        get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="train")


def test_bad_images(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(str(tmp_path / "none.png"))
    assert e.value.reason == "missing_image"
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageError) as e:
        load_image(str(tmp_path / "junk.png"))
    assert e.value.reason == "unreadable_image"
    _image(tmp_path / "big.png", size=(300, 200))
    data = (tmp_path / "big.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as e:
        load_image(str(tmp_path / "cut.png"))
    assert e.value.reason == "unreadable_image"


def test_cap_pixels():
    img = Image.new("RGB", (400, 100))
    capped = cap_pixels(img, 10_000)
    assert capped.width * capped.height <= 10_000 and abs(capped.width / capped.height - 4) < 0.1
    assert cap_pixels(img, None) is img and cap_pixels(img, 10**6) is img
