"""Frames of a video file, a folder of frames or a single image, decoded one at a time, as a player shows them.

A :class:`FrameReader` yields :class:`Frame` objects in order and can be iterated several times (each pass
decodes again, so nothing grows with the video's length). Video files (and animated GIFs) are decoded as a stream
with PyAV; a selection (:class:`FrameSelection`) keeps every n-th frame of a time or frame range, up to a cap, and
can shrink the long side. Every failure is a :class:`MediaError` whose message starts with the file (and the frame
index).

What a player does is done here too: frames are turned as a video's display matrix or a photo's EXIF orientation
asks (:class:`~mpgsam2.media.display.Orientation`); a video is decoded until its stream ends (the frame count a
container declares is a hint for progress bars: an edit list hides packets it counts, an index may promise more
than the file holds); frame times are presentation times, strictly increasing; 16-bit images are scaled to 8
bits; a multi-page TIFF gives one frame per page.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image, ImageOps, ImageSequence

from mpgsam2.media.display import EXIF_ORIENTATION_TAG, IDENTITY, Orientation, image_rgb
from mpgsam2.utils import PIL_ERRORS

logger = logging.getLogger(__name__)

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

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FPS = Fraction(24)  # frame rate of folders and images (timestamps, overlay video)
# a frame whose timestamp does not come after the previous one's (a damaged or odd container) is put this many
# seconds after it: times stay strictly increasing without shifting the frames that follow
_TIME_STEP = 1e-3


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
    """One selected frame: ``index`` in the input (before the selection), ``time`` in seconds (its presentation
    time from the first frame), ``name`` (the file stem of a folder's frame or an image, else the zero-padded
    index), ``rgb`` uint8 (H, W, 3) as displayed: ``orientation`` was applied to the stored pixels, and a player
    shows each pixel ``sample_aspect_ratio`` times as wide as high (1 but for anamorphic video)."""

    index: int
    time: float
    name: str
    rgb: np.ndarray
    orientation: Orientation = IDENTITY
    sample_aspect_ratio: Fraction = Fraction(1)


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

    def _raw(self) -> Iterator[Frame]:
        """Every input frame, in order, at its full size."""
        raise NotImplementedError

    def _stop_index(self) -> float:
        """The first input frame index past the selection (``inf`` when open-ended or given in seconds: with a
        variable frame rate no index says where a time is), to stop decoding early."""
        end = self.selection.end
        return float("inf") if end is None or end.seconds else end.value

    def __iter__(self) -> Iterator[Frame]:
        sel = self.selection
        kept = 0
        in_range = 0
        stop = self._stop_index()
        for frame in self._raw():
            index, time = frame.index, frame.time
            if sel.start is not None and (time if sel.start.seconds else index) < sel.start.value:
                continue
            if sel.end is not None and (time if sel.end.seconds else index) >= sel.end.value:
                break
            in_range += 1
            if (in_range - 1) % sel.stride:
                continue
            if sel.long_side is not None:
                frame = replace(frame, rgb=_shrink(frame.rgb, sel.long_side))
            yield frame
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
    """A video file (or an animated GIF) decoded as a stream with PyAV (first video stream).

    Frames are turned by their display matrix; their times are the presentation times the container gives its
    packets, matched to the decoded frames in presentation order (the decoder returns frames in that order, but
    AVI and some other containers store no presentation time and let the decoder pass decode-order stamps on).
    Packets an edit list hides (the pre-roll of a clip cut without re-encoding) count for neither.
    """

    def __init__(self, path: Path, selection: FrameSelection) -> None:
        with self._open(path) as container:
            stream = self._stream(path, container)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            count = int(stream.frames) or None
            sar = stream.sample_aspect_ratio
        super().__init__(path, selection, Fraction(rate) if rate else None)
        self.count = count  # what the container declares: a hint, the stream may hold fewer or more
        self.stored_sample_aspect_ratio = Fraction(sar) if sar else Fraction(1)
        self._told_short = False

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

    def _raw(self) -> Iterator[Frame]:
        index = 0
        origin: Fraction | None = None
        previous: float | None = None
        # presentation stamps of the packets sent and not yet matched to a frame (a heap)
        stamps: list[int] = []
        hidden = 0  # packets an edit list hides: counted by the container, never shown
        # the display matrix is read again only when the frames' rotation changes (reading side data on every
        # frame slows decoding down by half; frame.rotation is cheap but does not tell a mirror)
        turn: tuple[int, Orientation] | None = None
        with self._open(self.path) as container:
            stream = self._stream(self.path, container)
            stream.thread_type = "AUTO"  # frame threads: decoding keeps pace with the tiny model
            time_base = stream.time_base
            packets = container.demux(stream)  # ends with an empty packet that drains the decoder
            while True:
                try:
                    packet = next(packets)
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if packet.is_discard:
                        hidden += 1
                    elif stamp is not None:
                        heapq.heappush(stamps, stamp)
                    decoded = packet.decode()
                except StopIteration:
                    break
                except (av.error.FFmpegError, ValueError) as err:
                    raise MediaError(f"{self.path}: frame {index} cannot be decoded: {err}") from err
                for frame in decoded:
                    try:
                        rgb = frame.to_ndarray(format="rgb24")
                    except (av.error.FFmpegError, ValueError) as err:
                        raise MediaError(f"{self.path}: frame {index} cannot be decoded: {err}") from err
                    if stamps:
                        seconds = heapq.heappop(stamps) * time_base
                        origin = seconds if origin is None else origin
                        time = float(seconds - origin)  # from the first frame (some clocks start later)
                    else:  # no stamp at all: the nominal frame rate
                        time = 0.0 if previous is None else previous + 1 / float(self.fps)
                    if previous is not None and time <= previous:
                        time = previous + _TIME_STEP
                    previous = time
                    if turn is None or frame.rotation != turn[0]:
                        turn = (frame.rotation, _display_orientation(frame))
                    orientation = turn[1]
                    sar = self.stored_sample_aspect_ratio
                    yield Frame(
                        index,
                        time,
                        f"{index:06d}",
                        orientation.apply(rgb),
                        orientation,
                        1 / sar if orientation.swaps_sides else sar,
                    )
                    index += 1
        # the stream ended (a selection that stops early closes this generator first): however many frames the
        # container declared, these are all it shows; a shortfall is worth a word (a copy that lost its tail?)
        if self.count is not None and index + hidden < self.count and not self._told_short:
            self._told_short = True
            logger.warning(
                "%s: the file declares %d frames, its stream ended after %d (all of them are used; a truncated "
                "copy?)",
                self.path,
                self.count,
                index,
            )


def _display_orientation(frame: av.VideoFrame) -> Orientation:
    """The turn a player gives ``frame``: its display matrix (side data a decoder copies from the container's
    ``tkhd`` matrix / rotation tag), if any."""
    matrix = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    if matrix is None:
        return IDENTITY
    return Orientation.from_display_matrix(np.frombuffer(bytes(matrix), dtype=np.int32))


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

    def _raw(self) -> Iterator[Frame]:
        first: tuple[Path, tuple[int, ...]] | None = None
        for index, p in enumerate(self.files):
            rgb, orientation = _read_image(p, index)
            _check_size(p, index, rgb, first)
            first = first or (p, rgb.shape)
            yield Frame(index, index / float(self.fps), p.stem, rgb, orientation)


class ImageReader(FrameReader):
    """A single image (a one-frame video named after the file), or a multi-page TIFF (one frame per page, named
    by page index like a video's frames)."""

    def __init__(self, path: Path, selection: FrameSelection, fps: Fraction | None = None) -> None:
        super().__init__(path, selection, fps)
        self.count = 1
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                with Image.open(path) as img:
                    self.count = getattr(img, "n_frames", 1)
            except FileNotFoundError:
                raise MediaError(f"{path}: not found") from None
            except PIL_ERRORS as err:
                raise MediaError(f"{path}: cannot read the image: {err}") from err

    def _raw(self) -> Iterator[Frame]:
        if self.count == 1:
            rgb, orientation = _read_image(self.path, 0)
            yield Frame(0, 0.0, self.path.stem, rgb, orientation)
            return
        first: tuple[Path, tuple[int, ...]] | None = None
        index = 0
        try:
            with Image.open(self.path) as img:
                for index, page in enumerate(ImageSequence.Iterator(img)):
                    rgb, orientation = _displayed(page)
                    _check_size(self.path, index, rgb, first, what=f"page {index}")
                    first = first or (self.path, rgb.shape)
                    yield Frame(index, index / float(self.fps), f"{index:06d}", rgb, orientation)
        except MediaError:
            raise
        except PIL_ERRORS as err:
            raise MediaError(f"{self.path}: frame {index} cannot be decoded: {err}") from err


def _check_size(
    path: Path, index: int, rgb: np.ndarray, first: tuple[Path, tuple[int, ...]] | None, what: str = ""
) -> None:
    if first is not None and rgb.shape != first[1]:
        raise MediaError(
            f"{path}: frame {index}{f' ({what})' if what else ''} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but "
            f"{first[0]}{' page 0' if what else ''} is {first[1][1]}x{first[1][0]}; all frames of a video must "
            "have one size"
        )


def _displayed(img: Image.Image) -> tuple[np.ndarray, Orientation]:
    """The decoded image as a viewer shows it (its EXIF / TIFF orientation applied) and that orientation."""
    orientation = Orientation.from_exif(img.getexif().get(EXIF_ORIENTATION_TAG, 1))  # read before load():
    img.load()  # decode now: a truncated file fails here, with its name (TIFF turns itself here and drops the tag)
    return image_rgb(ImageOps.exif_transpose(img)), orientation


def _read_image(path: Path, index: int) -> tuple[np.ndarray, Orientation]:
    try:
        with Image.open(path) as img:
            pages = getattr(img, "n_frames", 1)
            if pages > 1 and img.format == "TIFF":
                raise MediaError(
                    f"{path}: frame {index} is a TIFF of {pages} pages; give a multi-page TIFF on its own, not in "
                    "a folder of frames"
                )
            return _displayed(img)
    except FileNotFoundError:
        raise MediaError(f"{path}: frame {index} not found") from None
    except MediaError:
        raise
    except PIL_ERRORS as err:
        raise MediaError(f"{path}: frame {index} cannot be decoded: {err}") from err


def open_frames(
    path: str | Path, selection: FrameSelection | None = None, fps: Fraction | None = None
) -> FrameReader:
    """The reader for ``path``: a video file or animated GIF (by suffix), a folder of frames or an image (a
    multi-page TIFF: its pages).

    Args:
        fps: frame rate of a folder, image or TIFF (ignored for video files, which carry their own).

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
