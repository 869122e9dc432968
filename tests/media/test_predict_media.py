"""`python -m mpgsam2.predict` on a video file with several sentences: PNGs, masks.json and overlay.mp4, the same
masks as the frames given as a folder and as eval.py's path; bad inputs fail naming the file, writing nothing."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers.datasets import item_meta
from PIL import Image
from pycocotools import mask as mask_utils

from mpgsam2 import predict
from mpgsam2.data import ReferringCollate, ReferringItem
from mpgsam2.data.transforms import ClipTransform
from mpgsam2.lit_module import RVOSLitModule
from mpgsam2.losses import MPGSAM2Criterion
from mpgsam2.media import FrameSelection, MediaError, open_frames, parse_position, render_demo_video
from mpgsam2.media.outputs import sentence_folder
from mpgsam2.text.tokenizer import Beit3Tokenizer

SENTENCES = ["the red square", "the blue circle"]
FPS = 12
NUM_FRAMES = 5
SIZE = 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    render_demo_video(path, num_frames=NUM_FRAMES, fps=FPS, size=SIZE)
    return path


def _png_masks(out: Path, k: int) -> tuple[list[str], np.ndarray]:
    files = sorted((out / sentence_folder(k, SENTENCES[k])).iterdir())
    images = [Image.open(p) for p in files]
    assert all(img.mode == "L" and img.size == (SIZE, SIZE) for img in images)
    arrays = np.stack([np.array(img) for img in images])
    assert set(np.unique(arrays)) <= {0, 255}
    return [p.stem for p in files], arrays > 0


def test_video_with_two_sentences(trained, clip, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "out"
    assert predict.main([str(ckpt), str(clip), *SENTENCES, "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["masks.json", "overlay.mp4", *(sentence_folder(k, s) for k, s in enumerate(SENTENCES))]
    )
    names = [f"{t:06d}" for t in range(NUM_FRAMES)]
    masks = []
    for k in range(len(SENTENCES)):
        stems, m = _png_masks(out, k)
        assert stems == names  # one PNG per frame per sentence
        masks.append(m)

    # masks.json decodes to exactly the PNGs
    doc = json.loads((out / "masks.json").read_text())
    assert [s["text"] for s in doc["sentences"]] == SENTENCES
    assert (doc["width"], doc["height"], doc["fps"]) == (SIZE, SIZE, FPS)
    assert [f["index"] for f in doc["frames"]] == list(range(NUM_FRAMES))
    assert [f["time"] for f in doc["frames"]] == pytest.approx([t / FPS for t in range(NUM_FRAMES)], abs=1e-6)
    for t, frame in enumerate(doc["frames"]):
        assert [m["sentence"] for m in frame["masks"]] == [0, 1]
        for k, entry in enumerate(frame["masks"]):
            rle = {"size": entry["rle"]["size"], "counts": entry["rle"]["counts"].encode()}
            assert (mask_utils.decode(rle).astype(bool) == masks[k][t]).all()
            assert 0.0 <= entry["score"] <= 1.0 and (entry["score"] > 0.5) == masks[k][t].any()

    # overlay.mp4: the input's frame count and frame rate
    with av.open(str(out / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS
        assert sum(1 for _ in container.decode(stream)) == NUM_FRAMES

    # the same frames as a folder of (lossless) PNGs give the same masks
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    decoded = [f.rgb for f in open_frames(clip)]
    for t, rgb in enumerate(decoded):
        Image.fromarray(rgb).save(frames_dir / f"{t:06d}.png")
    folder_out = tmp_path / "folder_out"
    argv = [
        str(ckpt),
        str(frames_dir),
        *SENTENCES,
        "--out",
        str(folder_out),
        "--format",
        "png",
        "--no-progress",
    ]
    assert predict.main(argv) == 0
    for k in range(len(SENTENCES)):
        assert (_png_masks(folder_out, k)[1] == masks[k]).all()

    # and eval.py's path (the Lightning module's predict_batch on the collate's batch) gives them too
    model, tokenizer_path = predict.load_model_for_inference(ckpt)
    reference = RVOSLitModule(model, MPGSAM2Criterion(), torch.optim.AdamW).eval()
    transform = ClipTransform(**model.input_sizes, train=False)
    collate = ReferringCollate(Beit3Tokenizer(tokenizer_path))
    for k, sentence in enumerate(SENTENCES):
        sam, beit, _, caption = transform(np.stack(decoded), None, sentence)
        item = ReferringItem(
            sam_frames=sam,
            beit_frames=beit,
            masks=torch.zeros(NUM_FRAMES, sam.shape[-1], sam.shape[-1]),
            valid=torch.zeros(NUM_FRAMES, dtype=torch.bool),
            caption=caption,
            meta=item_meta("clip", (SIZE, SIZE), NUM_FRAMES),
        )
        expected = (reference.predict_batch(collate([item]))[0] > 0).numpy()
        assert (masks[k] == expected).all()


def test_chunks_selection_and_sentences_file(trained, clip, tmp_path):
    """--chunk-size gives the chunked protocol's masks; --stride/--start/--max-frames pick input frames (named
    after their input index); --sentences reads one sentence per line; --format picks the outputs."""
    from mpgsam2.inference import predict_video
    from mpgsam2.media import encode_sentences

    ckpt, _ = trained
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n\n")
    out = tmp_path / "out"
    argv = [str(ckpt), str(clip), "--sentences", str(sentences), "--out", str(out), "--no-progress"]
    assert predict.main([*argv, "--chunk-size", "2", "--format", "png", "json"]) == 0
    assert not (out / "overlay.mp4").exists()
    model, tokenizer_path = predict.load_model_for_inference(ckpt)
    transform = ClipTransform(**model.input_sizes, train=False)
    sam, beit, _, _ = transform(np.stack([f.rgb for f in open_frames(clip)]), None, "")
    expressions = encode_sentences(Beit3Tokenizer(tokenizer_path), SENTENCES, "cpu")
    expected = predict_video(model.eval(), sam, beit, expressions, (SIZE, SIZE), chunk_size=2)
    for k in range(len(SENTENCES)):
        assert (_png_masks(out, k)[1] == expected[k].masks.numpy()).all()

    picked = tmp_path / "picked"
    argv = [str(ckpt), str(clip), "--sentences", str(sentences), "--out", str(picked), "--no-progress"]
    assert predict.main([*argv, "--stride", "2", "--start", "1", "--max-frames", "2"]) == 0
    doc = json.loads((picked / "masks.json").read_text())
    assert [f["index"] for f in doc["frames"]] == [1, 3] and doc["fps"] == FPS / 2
    assert _png_masks(picked, 0)[0] == ["000001", "000003"]


def test_precision_and_compile_flags_reach_the_engine(trained, clip, tmp_path, monkeypatch):
    """--precision bf16 gives predict_video's bf16 masks (CPU autocast); --compile runs the image encoder and the
    memory attention through torch.compile (faked: compiling takes minutes here; the wiring is what is checked)."""
    from mpgsam2.inference import predict_video
    from mpgsam2.media import encode_sentences

    compiled = []

    def fake_compile(fn):
        compiled.append(type(fn.__self__).__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    ckpt, _ = trained
    out = tmp_path / "out"
    argv = [str(ckpt), str(clip), *SENTENCES, "--out", str(out), "--no-progress", "--format", "png"]
    assert predict.main([*argv, "--precision", "bf16", "--compile"]) == 0
    assert sorted(compiled) == ["ImageEncoder", "MemoryAttention"]
    model, tokenizer_path = predict.load_model_for_inference(ckpt)
    transform = ClipTransform(**model.input_sizes, train=False)
    sam, beit, _, _ = transform(np.stack([f.rgb for f in open_frames(clip)]), None, "")
    expressions = encode_sentences(Beit3Tokenizer(tokenizer_path), SENTENCES, "cpu")
    expected = predict_video(model.eval(), sam, beit, expressions, (SIZE, SIZE), precision="bf16")
    for k in range(len(SENTENCES)):
        assert (_png_masks(out, k)[1] == expected[k].masks.numpy()).all()
    with pytest.raises(SystemExit):
        predict.main([*argv, "--precision", "int8"])


def test_positions_and_selection(tmp_path):
    assert parse_position("12") == parse_position("12f") and not parse_position("12").seconds
    assert parse_position("1.5s").seconds and parse_position("1.5s").value == 1.5
    with pytest.raises(ValueError, match="1.5"):
        parse_position("1.5")
    path = tmp_path / "c.mp4"
    render_demo_video(path, num_frames=10, fps=10, size=32)
    by_time = open_frames(path, FrameSelection(start=parse_position("0.2s"), end=parse_position("0.6s")))
    assert [f.index for f in by_time] == [2, 3, 4, 5]
    by_index = open_frames(path, FrameSelection(start=parse_position("8"), long_side=16))
    frames = list(by_index)
    assert [f.index for f in frames] == [8, 9] and frames[0].rgb.shape == (16, 16, 3)
    with pytest.raises(MediaError, match=r"c\.mp4: no frames in the selected range"):
        list(open_frames(path, FrameSelection(start=parse_position("20"))))
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(image)
    assert [(f.name, f.rgb.shape) for f in open_frames(image)] == [("one", (6, 8, 3))]
    assert open_frames(image).output_fps == Fraction(24)


def _mjpeg_avi(path: Path, num_frames: int = 5) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=12)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for _ in range(num_frames):
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _bad_inputs(tmp_path: Path, clip: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input, the error it must give)."""
    cases: dict[str, tuple[Path, str]] = {}
    # a video whose third frame's JPEG data is garbage
    good = tmp_path / "good.avi"
    _mjpeg_avi(good)
    data = bytearray(good.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]  # JPEG start markers
    data[starts[2] : starts[3] - 16] = np.random.default_rng(1).bytes(starts[3] - 16 - starts[2])
    (tmp_path / "corrupt_frame.avi").write_bytes(bytes(data))
    cases["corrupt frame"] = (
        tmp_path / "corrupt_frame.avi",
        r"corrupt_frame\.avi: frame 2 cannot be decoded",
    )
    # a file cut in half (an mp4's index is at its end) and a file that is not a video
    (tmp_path / "truncated.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    cases["truncated"] = (tmp_path / "truncated.mp4", r"truncated\.mp4: cannot read the video")
    (tmp_path / "text.mov").write_text("not a video")
    cases["not a video"] = (tmp_path / "text.mov", r"text\.mov: cannot read the video")
    # empty videos: no bytes, and a container header without a frame
    (tmp_path / "zero.mp4").write_bytes(b"")
    cases["zero bytes"] = (tmp_path / "zero.mp4", r"zero\.mp4: empty file")
    with av.open(str(tmp_path / "header_only.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    cases["no frames"] = (tmp_path / "header_only.mkv", r"header_only\.mkv: empty video")
    # folders: two frames with one stem, a damaged frame
    same = tmp_path / "same_stem"
    same.mkdir()
    for suffix in (".jpg", ".png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(same / f"00001{suffix}")
    cases["same stem"] = (same, r"00001\.png: has the same name stem as .*00001\.jpg")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for t in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(damaged / f"{t:05d}.png")
    (damaged / "00002.png").write_bytes((damaged / "00002.png").read_bytes()[:30])
    cases["damaged frame"] = (damaged, r"00002\.png: frame 2 cannot be decoded")
    cases["missing"] = (tmp_path / "missing.webm", r"missing\.webm: not found")
    return cases


def test_bad_inputs_name_the_file_and_write_nothing(trained, clip, tmp_path):
    ckpt, _ = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, (path, message) in _bad_inputs(inputs, clip).items():
        out = tmp_path / "out"
        # chunks of 2: the damaged frames come after a first chunk was written, which must vanish too
        argv = [str(ckpt), str(path), "x", "--out", str(out), "--chunk-size", "2", "--no-progress"]
        with pytest.raises(MediaError, match=message):
            predict.main(argv)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"], name  # nothing half-written


def test_a_frame_of_another_size_is_refused(tmp_path):
    folder = tmp_path / "sizes"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(folder / "b.png")
    with pytest.raises(MediaError, match=r"b\.png: frame 1 is 9x8"):
        list(open_frames(folder))


def test_overlay_tints_outlines_and_enlarges_small_frames():
    from mpgsam2.media import draw_overlay
    from mpgsam2.media.outputs import PALETTE

    rgb = np.zeros((90, 120, 3), np.uint8)
    masks = [np.zeros((90, 120), bool), np.zeros((90, 120), bool)]
    masks[0][40:60, 20:50] = True
    masks[1][40:60, 80:110] = True
    out = draw_overlay(rgb, masks, SENTENCES)
    assert out.shape == (270, 360, 3)  # x3: long side 360, a readable legend
    for k, (y, x) in enumerate([(150, 100), (150, 285)]):  # inside each mask: tinted towards its colour
        assert np.allclose(out[y, x], 0.45 * np.array(PALETTE[k]), atol=1)
    assert tuple(out[120, 100]) == PALETTE[0]  # the mask's top edge (row 40 x 3) is outlined in its colour
    assert (out[200:, :] == 0).all()  # away from masks and legend the frame is unchanged
    assert out[:20, :100].any()  # the legend


def test_the_documented_demo_command(trained, tmp_path, monkeypatch):
    """`python -m mpgsam2.predict --demo-video clip.mp4 --out demo_output` after `python train.py experiment=demo`
    (run from the folder holding logs/): the newest demo checkpoint segments the rendered clip's objects."""
    ckpt, _ = trained
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints"
    run.mkdir(parents=True)
    (run / "final.ckpt").symlink_to(ckpt)
    monkeypatch.chdir(tmp_path)
    assert predict.main(["--demo-video", "clip.mp4", "--out", "demo_output", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "demo_output" / "masks.json").read_text())
    assert [s["text"] for s in doc["sentences"]] == ["the purple triangle", "the yellow square"]
    assert len(doc["frames"]) == 48 and (tmp_path / "demo_output" / "overlay.mp4").is_file()
    with pytest.raises(SystemExit):  # INPUT and --demo-video together are refused
        predict.main(["--demo-video", "c.mp4", str(ckpt), "other.mp4", "--out", "o"])


def test_the_output_folder_is_staged_under_a_name_of_its_own(tmp_path: Path) -> None:
    from mpgsam2.media.outputs import staged_folder

    out = tmp_path / "out"
    mine = tmp_path / "out.partial"  # a user's folder that merely looks like a staging folder
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    (out).mkdir()
    (out / "old.png").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with staged_folder(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(out, overwrite=True) as staging:
            (staging / "new.png").write_bytes(b"new")
            raise RuntimeError("failed midway")
    assert (out / "old.png").read_bytes() == b"old"  # a failed run changes nothing
    with staged_folder(out, overwrite=True) as staging:
        (staging / "new.png").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["new.png"]
    assert (mine / "keep.txt").read_text() == "mine"  # never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.partial"]  # nothing left behind
