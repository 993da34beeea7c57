import json

import pytest
from PIL import Image

from data_gen.sources.base import SOURCES, get_source
from predictor.media import ImageError, cap_pixels, load_image


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
    assert src.unique_ids  # <folder>-<row>: data_gen need not scan for repeats
    with_ids = get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="validation", image_column="img",
                                        instruction_column="q", answer_column="a", id_column="a")
    assert not with_ids.unique_ids and with_ids.item_id(1) == with_ids[1].id == "['yes']"
    with pytest.raises(KeyError, match="columns"):
        get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="validation", image_column="nope")
    with pytest.raises(KeyError, match="validation"):
        get_source("hf_dataset")(path=str(tmp_path / "vqa"), split="train")


def test_hf_dataset_keeps_every_reference_answer(tmp_path):
    # VQA sets hold ten answers: as strings, as {"answer": ...} records, or as the {"answer": [...]} columns
    # `datasets` makes of a Sequence of records; correctness must see all of them, not the first
    import datasets

    img = Image.new("RGB", (28, 28), (0, 0, 255))
    vqa = ["blue"] * 2 + ["navy"] * 5 + ["dark blue"] * 3
    records = [{"answer": a, "answer_id": i} for i, a in enumerate(vqa)]
    layouts = {
        "strings": (datasets.Dataset.from_dict({"img": [img], "q": ["What colour?"], "a": [vqa]}), vqa),
        "records": (datasets.Dataset.from_dict({"img": [img], "q": ["What colour?"], "a": [records]}), vqa),
        "columns": (datasets.Dataset.from_dict(
            {"img": [img], "q": ["What colour?"], "a": [{"answer": vqa, "answer_id": list(range(10))}]},
            features=datasets.Features({"img": datasets.Image(), "q": datasets.Value("string"),
                                        "a": datasets.Sequence({"answer": datasets.Value("string"),
                                                                "answer_id": datasets.Value("int64")})})), vqa),
        "one": (datasets.Dataset.from_dict({"img": [img], "q": ["What colour?"], "a": ["blue"]}), ["blue"]),
    }
    for name, (ds, expected) in layouts.items():
        ds.save_to_disk(str(tmp_path / name))
        item = get_source("hf_dataset")(path=str(tmp_path / name), image_column="img", instruction_column="q",
                                        answer_column="a")[0]
        assert item.answer == "blue" and item.references == expected, name
    from data_gen.correctness import is_correct, score

    assert is_correct("Navy.", item.references, "exact") is False  # "one": only "blue"
    item = get_source("hf_dataset")(path=str(tmp_path / "records"), image_column="img", instruction_column="q",
                                    answer_column="a")[0]
    assert is_correct("Navy.", item.references, "exact")  # the 3rd to 7th annotators' answer counts
    assert score("navy", item.references, "vqa") == 1.0 and score("blue", item.references, "vqa") == pytest.approx(2 / 3)
    assert score("cyan", item.references, "vqa") == 0.0


def test_bad_images(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as lmms-eval sets it on import: still refused
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


def test_jsonl_line_with_bad_bytes_is_one_bad_item(tmp_path):
    """One byte that is not UTF-8 fails its own line, named by its number in the file (blank lines
    count), not the whole source."""
    _image(tmp_path / "a.png")
    good = json.dumps({"id": "q1", "image": "a.png", "instruction": "What colour?", "answer": "red"}).encode()
    bad = b'{"id": "q2", "image": "a.png", "instruction": "caf\xe9?", "answer": "x"}'
    (tmp_path / "items.jsonl").write_bytes(good + b"\n\n" + bad + b"\n" + good.replace(b"q1", b"q3") + b"\n")
    src = get_source("jsonl")(path=str(tmp_path / "items.jsonl"))
    assert len(src) == 3 and src[0].id == "q1" and src[2].id == "q3"
    with pytest.raises(ValueError, match=r"items.jsonl: line 3 is not UTF-8"):
        src[1]


def test_llava_records_that_cannot_be_read_are_single_bad_items(tmp_path):
    _image(tmp_path / "x.jpg")
    rec = {"id": "r1", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                           {"from": "gpt", "value": "Red."}]}
    line = json.dumps(rec).encode()
    (tmp_path / "conv.jsonl").write_bytes(line + b"\nnot json\n" + line.replace(b"What", b"Wh\xff") + b"\n"
                                          + b'"a string"\n' + line.replace(b"r1", b"r2") + b"\n")
    src = get_source("llava_json")(path=str(tmp_path / "conv.jsonl"))
    assert len(src) == 5 and src[0].id == "r1-0" and src[4].id == "r2-0"
    with pytest.raises(ValueError, match="conv.jsonl: line 2 is not valid JSON"):
        src[1]
    with pytest.raises(ValueError, match="conv.jsonl: line 3 is not UTF-8"):
        src[2]
    with pytest.raises(ValueError, match="conv.jsonl: record 3 is not a JSON object"):
        src[3]
    # a .json list: the record holding the bad bytes fails, the others are read
    (tmp_path / "conv.json").write_bytes(b"[" + line + b",\n" + line.replace(b"What", b"Wh\xff") + b"]")
    src = get_source("llava_json")(path=str(tmp_path / "conv.json"))
    assert len(src) == 2 and src[0].instruction == "What?"
    with pytest.raises(ValueError, match="conv.json: record 1 holds bytes that are not UTF-8"):
        src[1]


def _sources_with_paths(tmp_path, paths, **options):
    """The same image paths through every source that reads paths: {name: source}."""
    import datasets

    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "image": p, "instruction": "What colour?", "answer": "red"} for i, p in enumerate(paths)]
    (root / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conv = [{"id": r["id"], "image": r["image"], "conversations": [{"from": "human", "value": "What colour?"},
                                                                   {"from": "gpt", "value": "red"}]} for r in rows]
    (root / "conv.json").write_text(json.dumps(conv))
    datasets.Dataset.from_dict({"img": paths, "q": ["What colour?"] * len(paths), "a": ["red"] * len(paths)}
                               ).save_to_disk(str(tmp_path / "ds"))
    return {"jsonl": get_source("jsonl")(path=str(root / "items.jsonl"), **options),
            "llava_json": get_source("llava_json")(path=str(root / "conv.json"), **options),
            "hf_dataset": get_source("hf_dataset")(path=str(tmp_path / "ds"), image_column="img",
                                                   instruction_column="q", answer_column="a",
                                                   image_root=str(root), **options)}


def test_image_paths_stay_inside_the_image_root(tmp_path):
    """`..`, absolute paths and symlinks out of image_root are skipped items (image_outside_root) unless
    allow_outside_root; paths inside it, absolute or through a symlink inside it, are read."""
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    _image(root / "imgs" / "in.png")
    _image(tmp_path / "outside.png", colour=(0, 0, 255))
    (root / "imgs" / "link.png").symlink_to(tmp_path / "outside.png")
    (root / "alias.png").symlink_to(root / "imgs" / "in.png")
    inside = ["imgs/in.png", str(root / "imgs" / "in.png"), "alias.png", "imgs/../imgs/in.png"]
    outside = ["../outside.png", str(tmp_path / "outside.png"), "imgs/link.png", "imgs/../../outside.png"]
    for name, src in _sources_with_paths(tmp_path, inside + outside).items():
        for i in range(len(inside)):
            assert load_image(src[i].image).getpixel((0, 0)) == (200, 30, 30), (name, inside[i])
        for i in range(len(inside), len(inside) + len(outside)):
            with pytest.raises(ImageError, match="outside the image root.*allow_outside_root=true") as e:
                load_image(src[i].image)
            assert e.value.reason == "image_outside_root", (name, outside[i - len(inside)])
    for name, src in _sources_with_paths(tmp_path, outside, allow_outside_root=True).items():
        assert all(load_image(src[i].image).getpixel((0, 0)) == (0, 0, 255) for i in range(len(outside))), name


def test_jsonl_bad_bytes_in_data_gen_skip_one_line(tmp_path):
    """The data_gen loop over a jsonl with one undecodable line: that line is a bad_item (its line
    number in the manifest), every other line is written."""
    from data_gen.config import DataGenConfig
    from data_gen.run import run
    from test_data_gen import FakeAdapter, fake_explainer, read_out

    _image(tmp_path / "a.png")
    lines = [json.dumps({"id": f"q{i}", "image": "a.png", "instruction": "where", "answer": "yes"}).encode()
             for i in range(4)]
    lines[2] = lines[2].replace(b"where", b"wh\xe9re")
    (tmp_path / "items.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cfg = DataGenConfig(out=str(tmp_path / "out"), shard_size=10, progress=False, thumbnails=False)
    summary = run(cfg, get_source("jsonl")(path=str(tmp_path / "items.jsonl")), FakeAdapter(), fake_explainer, "fake")
    assert summary.written == 3 and summary.skipped == {"bad_item": 1}
    samples, done = read_out(tmp_path / "out")
    assert {s.meta["item_id"] for s in samples} == {"q0", "q1", "q3"}
    bad = done["index-000000002"]
    assert bad["reason"] == "bad_item" and "line 3 is not UTF-8" in bad["detail"]


def test_llava_json_turns_carry_their_history_and_several_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    _image(tmp_path / "imgs" / "x.jpg")
    _image(tmp_path / "imgs" / "y.jpg")
    records = [
        {"id": "r1", "image": "x.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A square."},
            {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "r2", "image": ["x.jpg", "y.jpg"], "conversations": [
            {"from": "human", "value": "Compare <image> with <image>"}, {"from": "gpt", "value": "same"}]},
    ]
    (tmp_path / "conv.json").write_text(json.dumps(records))
    src = get_source("llava_json")(path=str(tmp_path / "conv.json"), image_root=str(tmp_path / "imgs"))
    assert [src[i].id for i in range(len(src))] == ["r1-0", "r1-1", "r2-0"]
    assert src[0].messages is None  # a first turn with one image: the short form, as before
    chat = src[1].messages  # the second answered turn: the first question and answer come with it
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[0]["content"][0]["type"] == "image" and load_image(chat[0]["content"][0]["image"]).size == (56, 28)
    assert chat[0]["content"][1] == {"type": "text", "text": "What is this?"} and chat[1]["content"] == "A square."
    assert chat[2]["content"] == [{"type": "text", "text": "And its colour?"}] and src[1].instruction == "And its colour?"
    assert src[1].answer == "Red."
    parts = src[2].messages[0]["content"]  # two images, placed at their tags
    assert [p["type"] for p in parts] == ["text", "image", "text", "image"]
    assert parts[3]["image"].endswith("y.jpg") and src[2].instruction == "Compare  with"
    alone = get_source("llava_json")(path=str(tmp_path / "conv.json"), image_root=str(tmp_path / "imgs"), history=False)
    assert alone[1].messages is None and alone[1].instruction == "And its colour?"


def test_jsonl_images_and_messages(tmp_path):
    _image(tmp_path / "a.jpg")
    lines = [{"id": "m1", "images": ["a.jpg", "a.jpg"], "instruction": "Same?", "answer": "yes"},
             {"id": "c1", "messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg"},
                                                                    {"type": "text", "text": "What is it?"}]},
                                       {"role": "assistant", "content": "a square"},
                                       {"role": "user", "content": [{"type": "text", "text": "Colour?"}]}],
              "answer": "red"},
             {"id": "bad", "messages": [{"role": "assistant", "content": "x"}], "answer": "y"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    src = get_source("jsonl")(path=str(tmp_path / "d.jsonl"))
    assert [p["type"] for p in src[0].messages[0]["content"]] == ["image", "image", "text"]
    assert src[1].instruction == "Colour?" and load_image(src[1].messages[0]["content"][0]["image"]).size == (56, 28)
    with pytest.raises(ValueError, match="ending with the user turn"):
        src[2]
