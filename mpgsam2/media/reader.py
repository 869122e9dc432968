"""Frames of a video file, a folder of frames or a single image, decoded one at a time.

A :class:`FrameReader` yields :class:`Frame` objects in order and can be iterated several times (each pass
decodes again, so nothing grows with the video's length). Video files are decoded as a stream with PyAV; a
selection (:class:`FrameSelection`) keeps every n-th frame of a time or frame range, up to a cap, and can shrink
the long side. Every failure is a :class:`MediaError` whose message starts with the file (and the frame index).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mpgsam2.utils import PIL_ERRORS

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
    "FrameReader",
    "FrameSelection",
    "MediaError",
    "Position",
    "open_frames",
    "parse_position",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FPS = Fraction(24)  # frame rate of folders and images (timestamps, overlay video)


class MediaError(ValueError):
    """An input that cannot be read; the message starts with the file (and says which frame)."""


@dataclass(frozen=True)
class Position:
    """A point of the input: ``value`` seconds (``seconds=True``) or a frame index."""

    value: float
    seconds: bool


def parse_position(text: str) -> Position:
    """``"12"`` or ``"12f"``: frame 12; ``"1.5s"``: 1.5 seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([sf]?)\s*", text)
    if match is None:
        raise ValueError(f"{text!r}: expected a frame index (12, 12f) or seconds (1.5s)")
    number, unit = match.groups()
    if unit != "s" and "." in number:
        raise ValueError(f"{text!r}: a frame index is an integer (write 1.5s for seconds)")
    return Position(float(number), seconds=unit == "s")


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of the input are segmented, and at what size.

    Frames in [start, end) (seconds or input frame indices), then every ``stride``-th of them, at most
    ``max_frames``; frames whose long side exceeds ``long_side`` are shrunk to it (aspect ratio kept).
    """

    stride: int = 1
    start: Position | None = None
    end: Position | None = None
    max_frames: int | None = None
    long_side: int | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"the frame cap must be >= 1, got {self.max_frames}")
        if self.long_side is not None and self.long_side < 2:
            raise ValueError(f"the long side must be >= 2 pixels, got {self.long_side}")


@dataclass(frozen=True)
class Frame:
    """One selected frame: ``index`` in the input (before the selection), ``time`` in seconds, ``name`` (the
    file stem of a folder's frame, else the zero-padded index), ``rgb`` uint8 (H, W, 3)."""

    index: int
    time: float
    name: str
    rgb: np.ndarray


class FrameReader:
    """The selected frames of one input; iterate to decode them (again on each pass).

    Attributes:
        path: the input. fps: its frame rate (``DEFAULT_FPS`` for folders and images, or the one given).
        count: the number of input frames the container declares (None when unknown), for progress bars.
    """

    def __init__(self, path: Path, selection: FrameSelection, fps: Fraction | None = None) -> None:
        self.path = path
        self.selection = selection
        self.fps = fps or DEFAULT_FPS
        self.count: int | None = None

    def _raw(self) -> Iterator[tuple[int, float, str, np.ndarray]]:
        """(index, time, name, rgb) of every input frame, in order."""
        raise NotImplementedError

    def _stop_index(self) -> float:
        """The first input frame index past the selection (``inf`` when open-ended), to stop decoding early."""
        end = self.selection.end
        if end is None:
            return float("inf")
        return end.value * float(self.fps) if end.seconds else end.value

    def __iter__(self) -> Iterator[Frame]:
        sel = self.selection
        kept = 0
        in_range = 0
        stop = self._stop_index()
        for index, time, name, rgb in self._raw():
            if sel.start is not None and (time if sel.start.seconds else index) < sel.start.value:
                continue
            if sel.end is not None and (time if sel.end.seconds else index) >= sel.end.value:
                break
            in_range += 1
            if (in_range - 1) % sel.stride:
                continue
            yield Frame(index, time, name, _shrink(rgb, sel.long_side))
            kept += 1
            if (sel.max_frames is not None and kept >= sel.max_frames) or index + 1 >= stop:
                break
        if kept == 0:
            raise MediaError(f"{self.path}: no frames" + (" in the selected range" if in_range == 0 else ""))

    @property
    def output_fps(self) -> Fraction:
        """Frame rate of the selected frames (the input's divided by the stride)."""
        return self.fps / self.selection.stride


def _shrink(rgb: np.ndarray, long_side: int | None) -> np.ndarray:
    h, w = rgb.shape[:2]
    if long_side is None or max(h, w) <= long_side:
        return rgb
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))


class VideoFileReader(FrameReader):
    """A video file decoded as a stream with PyAV (first video stream)."""

    def __init__(self, path: Path, selection: FrameSelection) -> None:
        with self._open(path) as container:
            stream = self._stream(path, container)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            count = int(stream.frames) or None
        super().__init__(path, selection, Fraction(rate) if rate else None)
        self.count = count

    @staticmethod
    def _open(path: Path) -> av.container.InputContainer:
        try:
            if path.stat().st_size == 0:
                raise MediaError(f"{path}: empty file (0 bytes), not a video")
            return av.open(str(path))
        except FileNotFoundError:
            raise MediaError(f"{path}: file not found") from None
        except av.error.EOFError:  # a container header and nothing after it
            raise MediaError(f"{path}: empty video (the file has no frames)") from None
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise MediaError(
                f"{path}: cannot read the video (unknown format or damaged file): {err}"
            ) from err

    @staticmethod
    def _stream(path: Path, container: av.container.InputContainer) -> av.video.stream.VideoStream:
        if not container.streams.video:
            raise MediaError(f"{path}: the file has no video stream")
        return container.streams.video[0]

    def _raw(self) -> Iterator[tuple[int, float, str, np.ndarray]]:
        index = 0
        origin: float | None = None
        with self._open(self.path) as container:
            stream = self._stream(self.path, container)
            stream.thread_type = "AUTO"  # frame threads: decoding keeps pace with the tiny model
            frames = container.decode(stream)
            while True:
                try:
                    frame = next(frames)
                    rgb = frame.to_ndarray(format="rgb24")
                except StopIteration:
                    break
                except (av.error.FFmpegError, ValueError) as err:
                    raise MediaError(f"{self.path}: frame {index} cannot be decoded: {err}") from err
                if frame.time is None:
                    time = index / float(self.fps)
                else:  # seconds from the first frame (some containers start their clock later than 0)
                    origin = float(frame.time) if origin is None else origin
                    time = float(frame.time) - origin
                yield index, time, f"{index:06d}", rgb
                index += 1
        # only reached when the stream ran out (a selection that stops early closes this generator first)
        if self.count is not None and index < self.count:
            raise MediaError(
                f"{self.path}: frame {index} cannot be decoded: the file declares {self.count} frames but its "
                f"data ends after {index} (truncated or damaged?)"
            )


class FolderReader(FrameReader):
    """The image files of a folder in name order; two files with one stem (``a.jpg``, ``a.png``) are refused,
    since the masks are named after the stems."""

    def __init__(self, path: Path, selection: FrameSelection, fps: Fraction | None = None) -> None:
        super().__init__(path, selection, fps)
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise MediaError(f"{path}: no frames ({', '.join(IMAGE_SUFFIXES)} files) found")
        seen: dict[str, Path] = {}
        for p in self.files:
            if p.stem in seen:
                raise MediaError(
                    f"{p}: has the same name stem as {seen[p.stem]} (masks are named after stems)"
                )
            seen[p.stem] = p
        self.count = len(self.files)

    def _raw(self) -> Iterator[tuple[int, float, str, np.ndarray]]:
        first: tuple[Path, tuple[int, ...]] | None = None
        for index, p in enumerate(self.files):
            rgb = _read_image(p, index)
            if first is None:
                first = (p, rgb.shape)
            elif rgb.shape != first[1]:
                raise MediaError(
                    f"{p}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but {first[0]} is "
                    f"{first[1][1]}x{first[1][0]}; all frames of a video must have one size"
                )
            yield index, index / float(self.fps), p.stem, rgb


class ImageReader(FrameReader):
    """A single image: a one-frame video."""

    def __init__(self, path: Path, selection: FrameSelection, fps: Fraction | None = None) -> None:
        super().__init__(path, selection, fps)
        self.count = 1

    def _raw(self) -> Iterator[tuple[int, float, str, np.ndarray]]:
        yield 0, 0.0, self.path.stem, _read_image(self.path, 0)


def _read_image(path: Path, index: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, with its name
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise MediaError(f"{path}: frame {index} not found") from None
    except PIL_ERRORS as err:
        raise MediaError(f"{path}: frame {index} cannot be decoded: {err}") from err


def open_frames(
    path: str | Path, selection: FrameSelection | None = None, fps: Fraction | None = None
) -> FrameReader:
    """The reader for ``path``: a video file (by suffix), a folder of frames or an image.

    Args:
        fps: frame rate of a folder or image (ignored for video files, which carry their own).

    Raises:
        MediaError: the path is missing, of an unknown kind, or not readable.
    """
    path = Path(path)
    selection = selection or FrameSelection()
    suffix = path.suffix.lower()
    if path.is_dir():
        return FolderReader(path, selection, fps)
    if not path.exists():
        raise MediaError(f"{path}: not found")
    if suffix in VIDEO_SUFFIXES:
        return VideoFileReader(path, selection)
    if suffix in IMAGE_SUFFIXES:
        return ImageReader(path, selection, fps)
    raise MediaError(
        f"{path}: unknown input kind (a video {'/'.join(VIDEO_SUFFIXES)}, an image {'/'.join(IMAGE_SUFFIXES)} "
        "or a folder of frames)"
    )
