"""Real media as a player shows it: files written at test time by the codec libraries (PyAV's libx264 / mjpeg /
PNG encoders and MP4 / AVI muxers, Pillow's JPEG / PNG / GIF / TIFF writers), the way phones, archives and
`ffmpeg -c copy` write them, read back as a player shows them and segmented by `python -m mpgsam2.predict`.

Each file carries what the encoder was told: coloured corner markers of the scene a player must show, a grey
level per frame, presentation times; the tests check frame count, displayed size, times and content against it.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mpgsam2 import predict
from mpgsam2.media import FrameSelection, MediaError, open_frames, parse_position
from mpgsam2.media.display import Orientation
from mpgsam2.media.outputs import sentence_folder

H, W = 48, 64  # the displayed scene: landscape
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def scene(h: int = H, w: int = W) -> np.ndarray:
    """What a player must show: red top-left, green top-right, blue bottom-left, black elsewhere."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:16, :16] = RED
    rgb[:16, -16:] = GREEN
    rgb[-16:, :16] = BLUE
    return rgb


def corners(rgb: np.ndarray) -> dict[str, str]:
    """The colour (red / green / blue / black) at the middle of each 16-pixel corner block."""
    names = {RED: "red", GREEN: "green", BLUE: "blue", (0, 0, 0): "black"}
    out = {}
    h, w = rgb.shape[:2]
    for corner, (y, x) in {"tl": (8, 8), "tr": (8, w - 9), "bl": (h - 9, 8), "br": (h - 9, w - 9)}.items():
        colour = rgb[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(0)
        nearest = min(names, key=lambda c: np.abs(np.array(c) - colour).sum())
        assert np.abs(np.array(nearest) - colour).max() < 60, (corner, colour)
        out[corner] = names[nearest]
    return out


SHOWN = {"tl": "red", "tr": "green", "bl": "blue", "br": "black"}


def grey(level: int, h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w, 3), level, np.uint8)


def write_video(
    path: Path,
    frames: list[np.ndarray],
    codec: str = "libx264",
    fps: int = 12,
    times: list[float] | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    sar: Fraction | None = None,
    b_frames: int | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Encode and mux ``frames`` with PyAV: a display rotation (counter-clockwise degrees, PyAV's convention,
    optionally mirrored after) written by the muxer as the MP4 display matrix, a pixel aspect ratio, B-frames,
    presentation times on a millisecond clock."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if options:
            stream.options = options
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        durations: list[int] = []  # ms, of frames in order: each lasts until the next (the last 20 ms)
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.codec_context.max_b_frames = 0  # packets in frame order, each given its frame's duration
            durations = [round((b - a) * 1000) for a, b in zip(times, [*times[1:], times[-1] + 0.02])]
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times is not None:
                frame.time_base, frame.pts = Fraction(1, 1000), round(times[t] * 1000)
            for packet in [*stream.encode(frame), *(stream.encode(None) if t == len(frames) - 1 else [])]:
                if durations:
                    packet.duration = durations.pop(0)
                container.mux(packet)


def levels(frames) -> list[int]:
    return [int(round(f.rgb.mean())) for f in frames]


# --- rotation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("degrees", "hflip", "orientation"),
    [(90, False, Orientation(270)), (180, False, Orientation(180)), (-90, False, Orientation(90)),
     (90, True, Orientation(90, True))],
)  # fmt: skip
def test_display_matrix_rotation(tmp_path, degrees, hflip, orientation):
    """A phone's display matrix (written by the MP4 muxer from the stream's display rotation): the frames, their
    size and their markers are those a player shows. PyAV's rotation turns counter-clockwise for display and the
    mirror comes after it, so the stored frames are the scene turned back. (FFmpeg's own player and CLI show
    these files the same way: checked by hand with `ffmpeg -i phone.mp4 frame.png`, all rotations and flips.)"""
    shown = scene()
    stored = np.rot90(shown[:, ::-1] if hflip else shown, k=-degrees // 90)
    assert stored.shape != shown.shape or degrees == 180  # a quarter turn stores the other way round
    path = tmp_path / "phone.mp4"
    write_video(path, [stored] * 3, rotation=degrees, hflip=hflip)
    frames = list(open_frames(path))
    assert len(frames) == 3
    for frame in frames:
        assert frame.rgb.shape == shown.shape
        assert corners(frame.rgb) == SHOWN
        assert frame.orientation == orientation


@pytest.mark.parametrize("code", range(1, 9))
def test_exif_orientation_of_photos(tmp_path, code):
    """A JPEG with an EXIF orientation (Pillow writes the tag; libjpeg the pixels), alone and in a folder: shown
    as a viewer turns it. The stored pixels are the scene undone by the tag's meaning in the EXIF standard."""
    shown = scene()
    stored = {
        1: shown,
        2: shown[:, ::-1],  # mirrored
        3: np.rot90(shown, 2),
        4: shown[::-1],  # flipped top-bottom
        5: shown.transpose(1, 0, 2),  # transposed
        6: np.rot90(shown, 1),  # shown = stored turned 90 degrees clockwise
        7: np.rot90(shown, 2).transpose(1, 0, 2),  # transversed
        8: np.rot90(shown, -1),  # shown = stored turned 90 degrees counter-clockwise
    }[code]
    exif = Image.Exif()
    exif[0x0112] = code
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(stored)).save(folder / "photo.jpg", quality=95, exif=exif)
    Image.fromarray(shown).save(folder / "upright.png")
    for frames in (list(open_frames(folder / "photo.jpg")), list(open_frames(folder))[:1]):
        assert frames[0].rgb.shape == shown.shape and corners(frames[0].rgb) == SHOWN
        assert frames[0].orientation == Orientation.from_exif(code)


# --- counts and times -----------------------------------------------------------------------------------------


def test_edit_list_cut_is_read_to_its_end(tmp_path, caplog):
    """An MP4 cut without re-encoding (`ffmpeg -ss 0.48 -c copy`): the packets from the key frame up to the cut
    stay in the file behind an edit list; the container counts them, a player does not show them."""
    full = tmp_path / "full.mp4"
    write_video(full, [grey(t * 8) for t in range(30)], fps=25, options={"g": "100", "bf": "2"})
    cut, cut_frame = tmp_path / "cut.mp4", 12
    with av.open(str(full)) as source, av.open(str(cut), "w") as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        shift = round(Fraction(cut_frame, 25) / stream_in.time_base)
        for packet in source.demux(stream_in):
            if packet.dts is None:
                continue
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift  # the pre-roll goes below zero
            packet.stream = stream_out
            target.mux(packet)
    assert b"elst" in cut.read_bytes()  # the muxer wrote an edit list
    reader = open_frames(cut)
    assert reader.count == 30  # what the container declares
    frames = list(reader)
    assert len(frames) == 30 - cut_frame
    assert levels(frames) == pytest.approx([t * 8 for t in range(cut_frame, 30)], abs=4)
    assert [f.time for f in frames] == pytest.approx([t / 25 for t in range(30 - cut_frame)], abs=1e-6)
    assert not caplog.records  # nothing is missing: the hidden packets are the 12 not shown


def _chunk_starts(data: bytes) -> list[int]:
    """Where the AVI's frame chunks ('00dc' + size + JPEG) start."""
    movi = data.index(b"movi")
    chunks = range(movi, len(data) - 8)
    return [i for i in chunks if data[i : i + 4] == b"00dc" and data[i + 8 : i + 10] == b"\xff\xd8"]


def test_avi_declaring_more_frames_than_it_holds(tmp_path, caplog):
    """An AVI whose header counts 10 frames but whose data holds 7 (an archive copy that lost its tail): the 7
    are read, with a progress hint of 10, no error and one warning naming the file."""
    full = tmp_path / "full.avi"
    write_video(full, [grey(t * 20) for t in range(10)], codec="mjpeg")
    data = full.read_bytes()
    starts = _chunk_starts(data)
    assert len(starts) == 10
    short = tmp_path / "short.avi"
    short.write_bytes(data[: starts[7]])
    reader = open_frames(short)
    assert reader.count == 10
    frames = list(reader)
    assert levels(frames) == pytest.approx([t * 20 for t in range(7)], abs=3)
    assert [f.time for f in frames] == pytest.approx([t / 12 for t in range(7)], abs=1e-6)
    list(reader)  # a second pass (the command decodes more than once) says nothing new
    assert [r.getMessage() for r in caplog.records] == [
        f"{short}: the file declares 10 frames, its stream ended after 7 (all of them are used; a truncated copy?)"
    ]


def test_b_frames_in_avi_are_timed_in_presentation_order(tmp_path):
    """H.264 with B-frames in AVI: AVI stores no presentation time, so the decoder passes decode-order stamps on
    to frames (PyAV's frame.time goes back and forth); the frames' times must be presentation times."""
    path = tmp_path / "bframes.avi"
    write_video(path, [grey(t * 20) for t in range(12)], fps=24, b_frames=2)
    with av.open(str(path)) as container:
        raw = [frame.pts for frame in container.decode(video=0)]
    assert raw != sorted(raw)  # the case at hand: stamps out of order
    frames = list(open_frames(path))
    # decoded in presentation order
    assert levels(frames) == pytest.approx([t * 20 for t in range(12)], abs=4)
    assert [f.time for f in frames] == pytest.approx([t / 24 for t in range(12)], abs=1e-6)


VFR_TIMES = [0.0, 0.1, 0.5, 0.55, 2.0, 3.3]


def test_variable_frame_rate_and_a_time_range(tmp_path):
    """Irregular presentation times (a phone's variable frame rate) come back as written, and --start / --end in
    seconds cut by them (not by the average rate: a burst of frames, then a pause, puts 1 s at frame 2)."""
    path = tmp_path / "vfr.mp4"
    write_video(path, [grey(t * 30) for t in range(len(VFR_TIMES))], times=VFR_TIMES)
    frames = list(open_frames(path))
    assert [f.time for f in frames] == pytest.approx(VFR_TIMES, abs=1e-6)
    assert levels(frames) == pytest.approx([t * 30 for t in range(len(VFR_TIMES))], abs=4)
    burst = tmp_path / "burst.mp4"
    write_video(burst, [grey(t * 30) for t in range(6)], times=[0.0, 0.02, 0.04, 0.06, 0.08, 3.0])
    selected = open_frames(burst, FrameSelection(start=parse_position("0.01s"), end=parse_position("1s")))
    assert [f.index for f in selected] == [1, 2, 3, 4]


def test_non_square_pixels(tmp_path):
    """A 2:1 pixel aspect ratio (anamorphic video): the stored pixels are kept and the ratio travels with them;
    turned a quarter, a pixel is 1:2."""
    path = tmp_path / "anamorphic.mp4"
    write_video(path, [scene()] * 2, sar=Fraction(2))
    frames = list(open_frames(path))
    assert frames[0].rgb.shape == (H, W, 3) and frames[0].sample_aspect_ratio == 2
    turned = tmp_path / "turned.mp4"
    write_video(turned, [scene()] * 2, sar=Fraction(2), rotation=90)
    assert next(iter(open_frames(turned))).sample_aspect_ratio == Fraction(1, 2)


# --- pixels and kinds -------------------------------------------------------------------------------------------


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """16-bit grey PNG (Pillow) and 16-bit RGB PNG (FFmpeg's PNG encoder, rgb48): 65535 is 255, 32768 is 128."""
    values = np.array([[0, 257, 32768, 65535]] * 2, np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as img:
        assert img.mode.startswith("I")  # really stored with 16 bits
    frame = next(iter(open_frames(tmp_path / "grey16.png")))
    assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (2, 4, 3)
    assert frame.rgb[0, :, 0].tolist() == [0, 1, 128, 255] and (frame.rgb[..., 0] == frame.rgb[..., 2]).all()

    rgb48 = np.zeros((2, 4, 3), np.uint16)
    rgb48[0, 0], rgb48[0, 1] = (65535, 32768, 0), (0, 65535, 32768)
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 4, 2, "rgb48be"
    packets = codec.encode(av.VideoFrame.from_ndarray(rgb48, format="rgb48be"))
    (tmp_path / "rgb48.png").write_bytes(b"".join(bytes(p) for p in packets + codec.encode(None)))
    assert (tmp_path / "rgb48.png").read_bytes()[24] == 16  # IHDR: 16 bits per sample
    frame = next(iter(open_frames(tmp_path / "rgb48.png")))
    assert frame.rgb[0, 0].tolist() == [255, 128, 0] and frame.rgb[0, 1].tolist() == [0, 255, 128]


def test_animated_gif_is_a_video(tmp_path):
    """An animated GIF (Pillow's encoder) with its own delay per frame: its frames at their times."""
    colours = [RED, GREEN, BLUE, (255, 255, 0), (255, 255, 255)]
    images = [Image.fromarray(np.full((H, W, 3), c, np.uint8)) for c in colours]
    path = tmp_path / "anim.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=[100, 200, 50, 300, 100], loop=0)
    frames = list(open_frames(path))
    assert [f.time for f in frames] == pytest.approx([0.0, 0.1, 0.3, 0.35, 0.65], abs=1e-6)
    assert [tuple(f.rgb[H // 2, W // 2]) for f in frames] == colours
    assert [f.name for f in frames] == [f"{t:06d}" for t in range(5)]


def test_multi_page_tiff_gives_a_frame_per_page(tmp_path):
    """A multi-page TIFF (Pillow's writer) with an orientation tag: one frame per page, turned as tagged, at the
    folder frame rate; in a folder it is refused, and a page of another size is named."""
    shown = scene()
    pages = [Image.fromarray(np.ascontiguousarray(np.rot90(shown, 1)) // (t + 1)) for t in range(4)]
    path = tmp_path / "scan.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:], tiffinfo={0x0112: 6})  # turn 90 clockwise
    reader = open_frames(path, fps=Fraction(10))
    assert reader.count == 4
    frames = list(reader)
    assert [f.name for f in frames] == ["000000", "000001", "000002", "000003"]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert frames[0].rgb.shape == shown.shape and corners(frames[0].rgb) == SHOWN
    assert [int(f.rgb[8, 8, 0]) for f in frames] == [255, 127, 85, 63]  # page t is the scene / (t + 1)

    folder = tmp_path / "frames"
    folder.mkdir()
    path.rename(folder / "scan.tif")
    with pytest.raises(MediaError, match=r"scan\.tif: frame 0 is a TIFF of 4 pages"):
        list(open_frames(folder))
    mixed = tmp_path / "mixed.tiff"
    Image.fromarray(shown).save(mixed, save_all=True, append_images=[Image.fromarray(shown[:40])])
    with pytest.raises(MediaError, match=r"mixed\.tiff: frame 1 \(page 1\) is 64x40"):
        list(open_frames(mixed))


# --- through the command --------------------------------------------------------------------------------------


def test_phone_video_through_predict(trained, tmp_path):
    """A portrait phone clip (stored landscape, display matrix: turn 90 clockwise), variable frame rate, 2:1
    pixels: masks, masks.json and overlay.mp4 are upright, at the input's times, with the pixel ratio."""
    ckpt, _ = trained
    shown = scene(W, H)  # portrait: 48 wide, 64 high
    stored = np.rot90(shown, 1)
    path = tmp_path / "phone.mp4"
    write_video(path, [stored] * len(VFR_TIMES), times=VFR_TIMES, rotation=-90, sar=Fraction(2))
    out = tmp_path / "out"
    assert predict.main([str(ckpt), str(path), "the red square", "--out", str(out), "--no-progress"]) == 0

    doc = json.loads((out / "masks.json").read_text())
    assert (doc["width"], doc["height"]) == (H, W)
    assert (doc["rotation"], doc["mirrored"], doc["sample_aspect_ratio"]) == (90, False, [1, 2])
    assert [f["time"] for f in doc["frames"]] == pytest.approx(VFR_TIMES, abs=1e-6)
    assert all(f["masks"][0]["rle"]["size"] == [W, H] for f in doc["frames"])
    pngs = sorted((out / sentence_folder(0, "the red square")).iterdir())
    assert len(pngs) == len(VFR_TIMES) and all(Image.open(p).size == (H, W) for p in pngs)

    with av.open(str(out / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.sample_aspect_ratio == Fraction(1, 2)
        decoded = list(container.decode(stream))
        duration = container.duration / 1e6
    assert [float(f.time) for f in decoded] == pytest.approx(VFR_TIMES, abs=1e-3)
    assert all(f.height > f.width for f in decoded)  # portrait, as the input is shown
    with av.open(str(path)) as container:
        nominal = container.streams.video[0].average_rate  # the input's frame rate, as its container says
    # the last frame lasts one nominal frame: the input's length, not that of 6 frames at a constant rate
    assert duration == pytest.approx(3.3 + 1 / float(nominal), abs=1e-3)


def test_each_kind_through_predict(trained, tmp_path):
    """Every class of input above goes through the command: the frame count and the times a player shows."""
    ckpt, _ = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases: dict[Path, list[float]] = {}
    avi = inputs / "bframes.avi"
    write_video(avi, [grey(t * 20) for t in range(6)], fps=24, b_frames=2)
    cases[avi] = [t / 24 for t in range(6)]
    full = inputs / "full.avi"
    write_video(full, [grey(t * 20) for t in range(6)], codec="mjpeg")
    short = inputs / "short.avi"
    short.write_bytes(full.read_bytes()[: _chunk_starts(full.read_bytes())[4]])
    cases[short] = [t / 12 for t in range(4)]
    gif = inputs / "anim.gif"
    images = [Image.fromarray(grey(t * 40)) for t in range(3)]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=[100, 300, 100])
    cases[gif] = [0.0, 0.1, 0.4]
    tiff = inputs / "pages.tiff"
    images[0].save(tiff, save_all=True, append_images=images[1:])
    cases[tiff] = [0.0, 1 / 24, 2 / 24]
    png16 = inputs / "deep.png"
    Image.fromarray(np.full((H, W), 40000, np.uint16)).save(png16)
    cases[png16] = [0.0]
    photos = inputs / "photos"  # a phone's photo (turned by EXIF) beside an upright one
    photos.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(scene(), 1))).save(photos / "a.jpg", exif=exif)
    Image.fromarray(scene()).save(photos / "b.jpg")
    cases[photos] = [0.0, 1 / 24]
    docs = {}
    for k, (path, times) in enumerate(cases.items()):
        out = tmp_path / f"out{k}"
        argv = [str(ckpt), str(path), "x", "--out", str(out), "--no-progress", "--format", "json", "overlay"]
        assert predict.main(argv) == 0, path
        doc = json.loads((out / "masks.json").read_text())
        assert [f["time"] for f in doc["frames"]] == pytest.approx(times, abs=1e-6), path.name
        with av.open(str(out / "overlay.mp4")) as container:
            assert len(list(container.decode(video=0))) == len(times), path.name
        docs[path] = doc
    # the first frame's turn in the header, a frame turned otherwise says so
    assert (docs[photos]["rotation"], docs[photos]["width"], docs[photos]["height"]) == (90, W, H)
    assert [{k: f.get(k) for k in ("rotation", "mirrored")} for f in docs[photos]["frames"]] == [
        {"rotation": None, "mirrored": None},
        {"rotation": 0, "mirrored": False},
    ]
