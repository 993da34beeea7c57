"""Shard sample contract: round trip through encode/decode and every rejection."""
import io
import json

import numpy as np
import pytest
import torch

from predictor.schema import (EXT_ATTN, EXT_HEADS, EXT_META, EXT_REL, SCHEMA_VERSION, Sample, SampleError,
                              decode, encode, make_meta)


def meta(**over):
    m = make_meta(model_id="m", adapter="a", explainer="gae", modality="image", grid=[1, 2, 3],
                  instruction="q", reference_answer="r", generated_answer="r", correct=True, answer_tokens=1)
    m.update(over)
    return m


def sample(n=6, **over):
    kw = dict(key="k1", attn=torch.rand(n), relevance=torch.rand(n), meta=meta())
    kw.update(over)
    return Sample(**kw)


def npy(a):
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def test_round_trip_with_heads_thumbnail_and_extra():
    s = sample(attn_heads=torch.rand(4, 6), thumbnail=b"\x89PNG fake", extra_files={"note.txt": b"hi"})
    raw = encode(s)
    back = decode(raw)
    assert back.key == "k1" and back.grid == (1, 2, 3) and back.num_visual == 6
    torch.testing.assert_close(back.attn, s.attn)
    torch.testing.assert_close(back.relevance, s.relevance)
    torch.testing.assert_close(back.attn_heads.float(), s.attn_heads.half().float())
    assert back.thumbnail == b"\x89PNG fake" and back.extra_files == {"note.txt": b"hi"}
    assert back.meta == s.meta and back.meta["schema_version"] == SCHEMA_VERSION
    assert decode(raw, load_heads=False).attn_heads is None


def check(err: SampleError, field, expected_part, found_part):
    msg = str(err.value)
    assert "'k1'" in msg and field in msg, msg
    assert expected_part in msg and found_part in msg, msg
    assert err.value.field == field
    assert "python -m data_gen" in msg


@pytest.mark.parametrize("case,field,expected,found", [
    ("short_rel", EXT_REL, "length N_v=6", "length 5"),
    ("nan_attn", EXT_ATTN, "finite values", "1 non-finite of 6"),
    ("neg_rel", EXT_REL, "values >= 0", "min -1"),
    ("grid", "meta.grid", "t*h*w == N_v=6", "product 8"),
    ("version", "meta.schema_version", "one of (1,)", "99"),
    ("missing_meta", "meta.instruction", "present", "missing"),
    ("bad_type", "meta.correct", "bool", "int 1"),
    ("modality", "meta.modality", "one of ('image', 'video')", "'audio'"),
    ("heads_shape", EXT_HEADS, "shape (H, N_v=6)", "(2, 5)"),
    ("empty", EXT_ATTN, "non-empty 1-D", "shape (0,)"),
])
def test_every_rejection_names_key_field_expected_found(case, field, expected, found):
    s = sample()
    if case == "short_rel":
        s.relevance = torch.rand(5)
    elif case == "nan_attn":
        s.attn[2] = float("nan")
    elif case == "neg_rel":
        s.relevance[0] = -1.0
    elif case == "grid":
        s.meta["grid"] = [2, 2, 2]
    elif case == "version":
        s.meta["schema_version"] = 99
    elif case == "missing_meta":
        del s.meta["instruction"]
    elif case == "bad_type":
        s.meta["correct"] = 1
    elif case == "modality":
        s.meta["modality"] = "audio"
    elif case == "heads_shape":
        s.attn_heads = torch.rand(2, 5)
    elif case == "empty":
        s.attn = torch.zeros(0)
    with pytest.raises(SampleError) as err:
        encode(s)  # the writer refuses it ...
    check(err, field, expected, found)
    raw = {"__key__": "k1", EXT_ATTN: npy(s.attn.numpy()), EXT_REL: npy(s.relevance.numpy()),
           EXT_META: json.dumps(s.meta).encode()}
    if s.attn_heads is not None:
        raw[EXT_HEADS] = npy(s.attn_heads.numpy().astype(np.float16))
    with pytest.raises(SampleError) as err:
        decode(raw)  # ... and so does the reader
    check(err, field, expected, found)


@pytest.mark.parametrize("missing", [EXT_ATTN, EXT_REL, EXT_META])
def test_missing_file_is_named(missing):
    raw = encode(sample())
    del raw[missing]
    with pytest.raises(SampleError) as err:
        decode(raw)
    check(err, missing, "present", "missing")


def test_unreadable_payloads_are_named():
    raw = encode(sample())
    raw[EXT_ATTN] = b"not an npy"
    with pytest.raises(SampleError) as err:
        decode(raw)
    check(err, EXT_ATTN, "readable .npy", "Error")
    raw = encode(sample())
    raw[EXT_META] = b"{not json"
    with pytest.raises(SampleError) as err:
        decode(raw)
    check(err, EXT_META, "valid JSON", "JSONDecodeError")


def test_make_meta_requires_fields():
    with pytest.raises(KeyError, match="answer_tokens"):
        make_meta(model_id="m", adapter="a", explainer="e", modality="image", grid=[1, 1, 1],
                  instruction="q", reference_answer="r", generated_answer="r", correct=True)


def test_segments_validated():
    s = sample()
    s.meta["segments"] = [{"kind": "base", "start": 0, "grid": [1, 1, 4]}, {"kind": "crop", "start": 4, "grid": [1, 1, 2]}]
    decode(encode(s))
    s.meta["segments"][1]["start"] = 3
    with pytest.raises(SampleError) as err:
        encode(s)
    check(err, "meta.segments[1].start", "4 (contiguous)", "3")


@pytest.mark.parametrize("bad", [-1, 1.0, "3", True])
def test_probe_layer_is_optional_and_validated(bad):
    """meta.probe_layer: the decoder layer the attention came from; absent means 0 (shards written before it
    existed, all from models whose layer 0 is softmax attention)."""
    from predictor.schema import meta_value, validate

    assert meta_value(meta(), "probe_layer") == 0 and meta_value(meta(probe_layer=3), "probe_layer") == 3
    assert decode(encode(sample(meta=meta(probe_layer=3)))).meta["probe_layer"] == 3
    with pytest.raises(SampleError, match="meta.probe_layer"):
        validate(sample(meta=meta(probe_layer=bad)))


def test_training_summary_counts_an_absent_probe_layer_as_0(tmp_path):
    """The export's trained_on.probe_layer comes from the shards; shards without the field were layer 0."""
    from predictor.training.memory import ShardDataModule
    from predictor.training.streaming import StreamingDataModule
    from synthetic_shards import write_synthetic_shards

    write_synthetic_shards(tmp_path, 6, grids=[(1, 2, 3)])
    for cls in (ShardDataModule, StreamingDataModule):
        dm = cls(str(tmp_path), ["attn"], val_fraction=0.0)
        dm.setup()
        assert dm.summary["probe_layer"] == 0, cls.__name__
