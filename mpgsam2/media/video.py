"""Writing RGB frames to a video file with PyAV, one frame at a time."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

__all__ = ["VideoWriter"]


class VideoWriter:
    """An H.264 (yuv420p) video written frame by frame; use as a context manager.

    yuv420p needs even sides: frames of odd width or height are padded by one black row / column (the size is
    fixed by the first frame).
    """

    def __init__(self, path: str | Path, fps: Fraction | int, crf: int = 18) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.crf = crf
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0

    def __enter__(self) -> VideoWriter:
        self._container = av.open(str(self.path), mode="w")
        return self

    def write(self, rgb: np.ndarray) -> None:
        """Append one uint8 (H, W, 3) frame."""
        assert self._container is not None, "use VideoWriter as a context manager"
        h, w = rgb.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = w + w % 2, h + h % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf)}
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise ValueError(f"{self.path}: frame {self.frames} is {w}x{h}, the video's first frame was not")
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._container is not None
        try:
            if exc_type is None and self._stream is not None:
                for packet in self._stream.encode(None):  # flush the encoder's delayed frames
                    self._container.mux(packet)
        finally:
            self._container.close()
