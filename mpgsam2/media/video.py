"""Writing RGB frames to a video file with PyAV, one frame at a time."""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

__all__ = ["TIMED_TIME_BASE", "VideoWriter"]

TIMED_TIME_BASE = Fraction(1, 90000)  # the clock of a video written with frame times (MPEG's 90 kHz)


class VideoWriter:
    """An H.264 (yuv420p) video written frame by frame; use as a context manager.

    Frames written without a time follow each other at ``fps``. Frames written with their time (seconds; all or
    none of a video's) are shown at that time, counted from the first one, on a 90 kHz clock: a variable frame
    rate stays variable, each frame lasting until the next (the last ``1 / fps``); such a video has no B-frames, so
    that frames leave the encoder in order and each packet gets its frame's duration (the container's length is
    then the input's). ``sample_aspect_ratio`` (the width of a pixel over its height) makes players stretch the
    frames as the input's were.

    yuv420p needs even sides: frames of odd width or height are padded by one black row / column (the size is
    fixed by the first frame).
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction | int,
        crf: int = 18,
        sample_aspect_ratio: Fraction = Fraction(1),
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.crf = crf
        self.sample_aspect_ratio = Fraction(sample_aspect_ratio)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._timed: bool | None = None
        self._first_time = 0.0
        # a timed frame waits for the next one's time (its duration)
        self._pending: av.VideoFrame | None = None
        self._durations: deque[int] = deque()  # of the frames sent to the encoder, for their packets
        self.frames = 0

    def __enter__(self) -> VideoWriter:
        self._container = av.open(str(self.path), mode="w")
        return self

    def write(self, rgb: np.ndarray, time: float | None = None) -> None:
        """Append one uint8 (H, W, 3) frame, shown at ``time`` seconds when given."""
        assert self._container is not None, "use VideoWriter as a context manager"
        h, w = rgb.shape[:2]
        if self._stream is None:
            self._timed = time is not None
            self._first_time = time or 0.0
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
            if self.sample_aspect_ratio != 1:
                self._stream.codec_context.sample_aspect_ratio = self.sample_aspect_ratio
            if self._timed:
                self._stream.codec_context.time_base = TIMED_TIME_BASE
                self._stream.codec_context.max_b_frames = 0
        if (time is not None) != self._timed:
            raise ValueError(f"{self.path}: give every frame a time or none (frame {self.frames})")
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.path}: frame {self.frames} is {w}x{h}, the video's first frame was not")
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if time is None:
            self._encode(frame)
        else:
            frame.time_base = TIMED_TIME_BASE
            frame.pts = round((time - self._first_time) / TIMED_TIME_BASE)
            if self._pending is not None:
                frame.pts = max(frame.pts, self._pending.pts + 1)
                self._pending.duration = frame.pts - self._pending.pts
                self._encode(self._pending)
            self._pending = frame
        self.frames += 1

    def _encode(self, frame: av.VideoFrame | None) -> None:
        assert self._container is not None and self._stream is not None
        if frame is not None and self._timed:
            self._durations.append(frame.duration)
        for packet in self._stream.encode(frame):
            if self._timed:
                packet.duration = self._durations.popleft()  # no B-frames: packets come in frame order
            self._container.mux(packet)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._container is not None
        try:
            if exc_type is None and self._stream is not None:
                if self._pending is not None:
                    self._pending.duration = round(1 / self.fps / TIMED_TIME_BASE)
                    self._encode(self._pending)
                self._encode(None)  # flush the encoder's delayed frames
        finally:
            self._container.close()
