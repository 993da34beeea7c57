"""Video items: frame lists and video files in the jsonl / llava_json sources, frame sampling, the
torchcodec decoder (real when installed, a stub otherwise), and the data_gen loop on video items."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from data_gen.sources.base import Item, get_source
from predictor.media import FrameSampling, ImageError, VideoFile, load_image, load_video


def _frames(folder, n, size=(56, 28)):
    """n tiny PNGs whose red channel is the frame number * 10 -> their paths relative to folder's parent."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        Image.new("RGB", size, (10 * t, 0, 0)).save(folder / f"f{t}.png")
    return [f"{folder.name}/f{t}.png" for t in range(n)]


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_video_as_frame_paths(tmp_path):
    paths = _frames(tmp_path / "clip", 10)
    src = get_source("jsonl")(path=_jsonl(tmp_path / "v.jsonl", [
        {"id": "v1", "video": paths, "fps": 10, "instruction": "What moves?", "answer": "a dot"},
        {"id": "i1", "image": paths[0], "instruction": "Colour?", "answer": "black"},
        {"id": "v2", "video": paths, "image": paths[0], "instruction": "Both?", "answer": "x"},
        {"id": "v3", "video": 5, "instruction": "Number?", "answer": "x"},
    ]), num_frames=4)
    v = src[0]
    assert v.modality == "video" and v.image is None and len(v.video) == 4
    assert [load_image(f).getpixel((0, 0))[0] for f in v.video] == [0, 30, 60, 90]  # frames 0, 3, 6, 9
    assert v.fps == pytest.approx(10 / 3)  # the kept frames are 3 source frames apart
    assert src[1].modality == "image" and src[1].video is None
    with pytest.raises(ValueError, match="line 3 has both 'image' and 'video'"):
        src[2]
    with pytest.raises(ValueError, match="line 4: 'video' must be a video file path or a list of frame paths"):
        src[3]
    # the field name is configurable, like image_field; without a record fps, default_fps is assumed
    named = get_source("jsonl")(path=_jsonl(tmp_path / "w.jsonl", [
        {"frames": paths[:3], "instruction": "What moves?", "answer": "a dot"}]), video_field="frames",
        num_frames=None, default_fps=2.0)
    assert len(named[0].video) == 3 and named[0].fps == 2.0 and len(named[0].id) == 16


def test_frame_sampling():
    assert FrameSampling(num_frames=4).indices(10, 10.0) == ([0, 3, 6, 9], pytest.approx(10 / 3))
    assert FrameSampling(num_frames=None, fps=5).indices(10, 10.0) == ([0, 2, 4, 6, 8], 5)
    assert FrameSampling(num_frames=None, fps=4).indices(10, 10.0) == ([0, 2, 5, 7], 4)
    assert FrameSampling(num_frames=None, fps=30).indices(3, 10.0) == ([0, 1, 2], 10.0)  # no upsampling
    assert FrameSampling(num_frames=8).indices(3, 10.0) == ([0, 1, 2], 10.0)
    assert FrameSampling(num_frames=None).indices(5, 1.0) == ([0, 1, 2, 3, 4], 1.0)
    assert FrameSampling(num_frames=1).indices(5, 1.0) == ([0], 1.0)
    with pytest.raises(ValueError, match="both set.*source.num_frames=null"):
        FrameSampling(num_frames=8, fps=2)
    for bad in ({"num_frames": 0}, {"num_frames": 2.5}, {"num_frames": None, "fps": -1}, {"default_fps": 0}):
        with pytest.raises(ValueError, match="source."):
            FrameSampling(**bad)


def test_llava_json_video(tmp_path):
    paths = _frames(tmp_path / "clip", 6)
    conv = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "It turns red."}]
    (tmp_path / "conv.json").write_text(json.dumps([
        {"id": "a", "video": paths, "fps": 3, "conversations": conv},
        {"id": "b", "video": "movie.mp4", "conversations": conv},
        {"id": "c", "video": "../../etc/passwd.mp4", "conversations": conv},
    ]))
    src = get_source("llava_json")(path=str(tmp_path / "conv.json"), num_frames=None, fps=1.5)
    a, b, c = src[0], src[1], src[2]
    assert a.id == "a-0" and a.instruction == "What happens?" and a.modality == "video"
    assert [load_image(f).getpixel((0, 0))[0] for f in a.video] == [0, 20, 40] and a.fps == 1.5
    assert b.modality == "video" and isinstance(b.video, VideoFile) and b.fps is None  # read from the file
    assert b.video.path == str(tmp_path / "movie.mp4") and b.video.sampling.fps == 1.5
    with pytest.raises(ImageError, match="outside the image root") as e:
        load_video(c.video)
    assert e.value.reason == "image_outside_root"


def test_video_frames_stay_inside_the_image_root(tmp_path):
    root = tmp_path / "root"
    paths = _frames(root / "clip", 3)
    Image.new("RGB", (28, 28), (0, 0, 255)).save(tmp_path / "outside.png")
    (root / "clip" / "link.png").symlink_to(tmp_path / "outside.png")
    rows = [{"id": "in", "video": paths, "instruction": "q", "answer": "a"},
            {"id": "dots", "video": [paths[0], "../outside.png"], "instruction": "q", "answer": "a"},
            {"id": "abs", "video": [str(tmp_path / "outside.png")], "instruction": "q", "answer": "a"},
            {"id": "link", "video": [paths[0], "clip/link.png"], "instruction": "q", "answer": "a"}]
    src = get_source("jsonl")(path=_jsonl(root / "v.jsonl", rows), num_frames=None)
    assert len(load_video(src[0].video, src[0].fps)[0]) == 3
    for i, frame in ((1, 1), (2, 0), (3, 1)):
        with pytest.raises(ImageError, match=f"video frame {frame} of .*outside the image root") as e:
            load_video(src[i].video)
        assert e.value.reason == "image_outside_root"
    free = get_source("jsonl")(path=str(root / "v.jsonl"), num_frames=None, allow_outside_root=True)
    assert load_video(free[2].video)[0][0].getpixel((0, 0)) == (0, 0, 255)


def test_frames_as_arrays_and_tensors():
    hwc = np.zeros((28, 56, 3), dtype=np.uint8)
    hwc[..., 1] = 200
    chw = torch.zeros(3, 28, 56, dtype=torch.uint8)
    chw[2] = 100
    assert load_image(hwc).size == (56, 28) and load_image(hwc).getpixel((0, 0)) == (0, 200, 0)
    assert load_image(chw).size == (56, 28) and load_image(chw).getpixel((0, 0)) == (0, 0, 100)
    assert load_image(np.full((4, 4, 3), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.zeros((4, 4), dtype=np.uint8)).mode == "RGB"
    clip = torch.zeros(5, 3, 28, 28, dtype=torch.uint8)  # (T, C, H, W): a whole clip as one tensor
    frames, fps = load_video(clip, 2.0)
    assert len(frames) == 5 and fps == 2.0 and frames[0].size == (28, 28)
    for bad in (np.zeros((4, 4, 7), dtype=np.uint8), np.full((4, 4, 3), 3.0), np.zeros(4, dtype=np.uint8)):
        with pytest.raises(ImageError, match="expected") as e:
            load_image(bad)
        assert e.value.reason == "unreadable_image"
    with pytest.raises(ImageError, match="video frame 1 of 2: .*expected") as e:
        load_video([hwc, np.zeros((4, 4, 7), dtype=np.uint8)])
    with pytest.raises(ImageError, match="no frames") as e:
        load_video([])
    assert e.value.reason == "missing_video"


def test_video_file_without_torchcodec_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    with pytest.raises(ImageError, match=r"clip.mp4.*needs torchcodec.*pip install torchcodec.*FFmpeg") as e:
        load_video(VideoFile(str(tmp_path / "clip.mp4"), FrameSampling()))
    assert e.value.reason == "missing_video_decoder"
    with pytest.raises(ImageError, match="no file") as e:  # a missing file says so, decoder or not
        load_video(VideoFile(str(tmp_path / "none.mp4"), FrameSampling()))
    assert e.value.reason == "missing_video"


class _StubDecoder:
    """torchcodec.decoders.VideoDecoder's surface that load_video uses: 20 frames at 10 fps."""

    def __init__(self, path):
        if open(path, "rb").read(4) != b"STUB":
            raise RuntimeError("could not find a video stream")
        self.metadata = types.SimpleNamespace(num_frames=20, average_fps=10.0)

    def get_frames_at(self, indices):
        data = torch.zeros(len(indices), 3, 28, 56, dtype=torch.uint8)
        data[:, 0] = torch.tensor(indices, dtype=torch.uint8)[:, None, None]
        return types.SimpleNamespace(data=data)


def test_video_file_through_a_stub_decoder(tmp_path, monkeypatch):
    stub = types.ModuleType("torchcodec.decoders")
    stub.VideoDecoder = _StubDecoder
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", stub)
    (tmp_path / "clip.mp4").write_bytes(b"STUB")
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    frames, fps = load_video(VideoFile(str(tmp_path / "clip.mp4"), FrameSampling(num_frames=None, fps=2.5)))
    assert [f.getpixel((0, 0))[0] for f in frames] == [0, 4, 8, 12, 16] and fps == 2.5
    frames, fps = load_video(VideoFile(str(tmp_path / "clip.mp4"), FrameSampling(num_frames=3)), max_video_pixels=3 * 392)
    assert [f.getpixel((0, 0))[0] for f in frames] == [0, 10, 19] and fps == pytest.approx(10 * 2 / 19)
    assert all(f.width * f.height <= 392 for f in frames)  # the clip's pixel budget, split over its frames
    with pytest.raises(ImageError, match="junk.mp4: RuntimeError: could not find a video stream") as e:
        load_video(VideoFile(str(tmp_path / "junk.mp4"), FrameSampling()))
    assert e.value.reason == "unreadable_video"


def test_video_file_through_torchcodec(tmp_path):
    """The real decoder, where torchcodec and FFmpeg's libraries are installed (skipped otherwise)."""
    clip = torch.zeros(12, 3, 32, 48, dtype=torch.uint8)
    clip[:, 0] = (torch.arange(12, dtype=torch.uint8) * 20)[:, None, None]
    try:
        from torchcodec.encoders import VideoEncoder

        encoder = VideoEncoder(clip, frame_rate=6)  # loads libtorchcodec and FFmpeg's libraries, lazily
    except Exception as e:  # not installed (ImportError), or FFmpeg's libraries missing (RuntimeError)
        pytest.skip(f"torchcodec unusable here: {type(e).__name__}: {str(e)[:100]}")
    encoder.to_file(str(tmp_path / "clip.mp4"))
    rows = [{"id": "v", "video": "clip.mp4", "instruction": "q", "answer": "a"}]
    item = get_source("jsonl")(path=_jsonl(tmp_path / "v.jsonl", rows), num_frames=None, fps=3)[0]
    frames, fps = load_video(item.video, item.fps)
    assert len(frames) == 6 and fps == 3 and frames[0].size == (48, 32)
    reds = [f.getpixel((24, 16))[0] for f in frames]
    assert all(abs(r - 40 * t) <= 12 for t, r in enumerate(reds)), reds  # frames 0, 2, 4, ... (lossy codec)


# --- the data_gen loop ---------------------------------------------------------------------------
class VideoFakeAdapter:
    """test_data_gen.FakeAdapter's video twin: 1 token per 28x28 px cell per frame, grid (T, h, w);
    `fps` is accepted and recorded (the signature data_gen inspects)."""

    name, model_id, probe_layer = "fake", "fake-model", 0

    def __init__(self):
        self.fps_seen: list = []

    def prepare(self, image, instruction, video=None, fps=None):
        assert image is None and video is not None
        self.fps_seen.append(fps)
        t, h, w = len(video), max(1, video[0].height // 28), max(1, video[0].width // 28)
        cells = torch.cat([torch.tensor(list(f.convert("L").resize((w, h)).getdata()), dtype=torch.float32)
                           for f in video]) / 255 + 0.01
        n_v, n_i = t * h * w, len(instruction.split())
        from predictor.adapters.base import Prepared
        return Prepared(inputs={"input_ids": torch.zeros(1, 3 + n_v + n_i, dtype=torch.long), "cells": cells},
                        visual_positions=torch.arange(3, 3 + n_v), instruction_positions=torch.arange(3 + n_v, 3 + n_v + n_i),
                        grid=(t, h, w), modality="video")

    def generate(self, prepared, max_new_tokens=16):
        return torch.tensor([7]), "yes"

    def layer0_attention(self, prepared):
        c = prepared.inputs["cells"]
        heads = torch.stack([torch.softmax(c, 0), torch.softmax(-c, 0)])
        return heads, heads.mean(0)


class NoFpsAdapter(VideoFakeAdapter):
    def prepare(self, image, instruction, video=None):  # an adapter from before prepare(fps=)
        return super().prepare(image, instruction, video=video)


def _explain(adapter, prepared, answer_ids):
    c = prepared.inputs["cells"]
    return c / c.sum()


def test_data_gen_writes_video_samples(tmp_path):
    from data_gen.config import DataGenConfig
    from data_gen.run import run
    from test_data_gen import ListSource, read_out

    paths = _frames(tmp_path / "clip", 8, size=(56, 56))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "paths", "video": paths, "fps": 8, "instruction": "what moves", "answer": "yes"},
        {"id": "gone", "video": paths[:2] + ["clip/none.png"], "instruction": "what moves", "answer": "yes"},
    ]))
    src = get_source("jsonl")(path=str(tmp_path / "rows.jsonl"), num_frames=4)
    pil = [Image.new("RGB", (56, 28), (0, 90, 0))] * 3
    items = [src[0], src[1],
             Item(id="pil", instruction="what moves", answer="yes", video=pil, modality="video", fps=2.0),
             Item(id="tensor", instruction="what moves", answer="yes", video=torch.full((2, 3, 28, 56), 50, dtype=torch.uint8),
                  modality="video"),
             Item(id="empty", instruction="what moves", answer="yes", video=[], modality="video"),
             Item(id="given_fps", instruction="what moves", answer="yes", video=pil, modality="video", fps=3.0)]
    # 4 frames of 56x56 px would be 16 tokens; a clip budget of 8 cells leaves each frame 2 cells' pixels
    cfg = DataGenConfig(out=str(tmp_path / "out"), progress=False, thumbnails=True, max_video_pixels=8 * 28 * 28)
    adapter = VideoFakeAdapter()
    summary = run(cfg, ListSource(items), adapter, _explain, "fake")
    assert summary.written == 4 and summary.skipped == {"missing_image": 1, "missing_video": 1}
    samples, done = read_out(tmp_path / "out")
    by_id = {s.meta["item_id"]: s for s in samples}
    s = by_id["paths"]
    assert s.meta["modality"] == "video" and s.meta["video"] == {"num_frames": 4, "fps": pytest.approx(8 / 7 * 3)}
    assert s.meta["grid"][0] == 4 and s.relevance.shape[0] == 4 * s.meta["grid"][1] * s.meta["grid"][2] <= 8
    assert by_id["pil"].meta["video"] == {"num_frames": 3, "fps": 2.0}
    assert by_id["tensor"].meta["video"] == {"num_frames": 2, "fps": None}
    assert by_id["given_fps"].meta["video"] == {"num_frames": 3, "fps": 3.0}
    assert adapter.fps_seen == [pytest.approx(24 / 7), 2.0, None, 3.0]  # "gone" fails before prepare
    assert "video frame 2 of 3: no file" in done["gone"]["detail"]
    # an adapter whose prepare takes no fps is called without it
    summary = run(DataGenConfig(out=str(tmp_path / "out2"), progress=False), ListSource(items[:1]), NoFpsAdapter(),
                  _explain, "fake")
    assert summary.written == 1
