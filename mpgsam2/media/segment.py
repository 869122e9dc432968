"""Segment several sentences in one input (video file, folder, image) and write the outputs: the one code path
of ``python -m mpgsam2.predict`` and ``python -m mpgsam2.app``.

The model sees the frames through :func:`mpgsam2.inference.predict_video` (image features shared by the sentences)
with the evaluation transform (:class:`~mpgsam2.data.transforms.ClipTransform`, ``train=False``), so the masks
are those of ``eval.py`` for the same frames and sentences. Frames are decoded and transformed when the model asks
for them:

- with ``chunk_size``, each chunk of frames is one ``predict_video`` call (chunks are independent runs, spec §3.2,
  exactly as ``predict_video(..., chunk_size=...)`` cuts them) and its masks are written before the next chunk
  is decoded: memory is flat in the video's length;
- without, the whole video is one run: the input is decoded again whenever the model goes back to an earlier
  frame, and once more to write the outputs, so nothing per frame is held here beyond what ``predict_video``
  itself holds for the whole video (its views and logits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mpgsam2.data.transforms import ClipTransform
from mpgsam2.inference.predictor import ExpressionPrediction, predict_video
from mpgsam2.media.outputs import PredictionWriter, staged_folder
from mpgsam2.media.reader import Frame, FrameReader, MediaError
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = ["Progress", "encode_sentences", "frame_score", "segment_to_folder"]

# progress(stage, n): ``n`` more frames reached ``stage`` ("decoded" or "segmented")
Progress = Callable[[str, int], None]


def encode_sentences(
    tokenizer: Beit3Tokenizer, sentences: Sequence[str], device: str | torch.device
) -> list[tuple[Tensor, Tensor]]:
    """``predict_video``'s expressions: each sentence tokenized on its own (its own length, no padding but the
    tokenizer's unknown pieces, as the evaluation collate marks them)."""
    expressions = []
    for sentence in sentences:
        ids, _ = tokenizer([sentence])
        expressions.append((ids[0].to(device), (ids[0] == tokenizer.pad_id).to(device)))
    return expressions


def frame_score(logits: Tensor) -> float:
    """A frame's score in [0, 1]: the mean probability over the mask's pixels, or the highest probability of the
    frame when the mask is empty (then below 0.5)."""
    probs = torch.sigmoid(logits)
    mask = logits > 0
    return float(probs[mask].mean() if mask.any() else probs.max())


class _Views:
    """Both model views of frame t, computed on first access (the last frame's are kept: a model that reads
    ``sam[t]`` then ``beit[t]`` transforms once)."""

    def __init__(
        self, get_rgb: Callable[[int], np.ndarray], n: int, transform: ClipTransform, device
    ) -> None:
        self.get_rgb, self.n, self.transform, self.device = get_rgb, n, transform, device
        self._last: tuple[int, Tensor, Tensor] | None = None

    def __call__(self, t: int) -> tuple[Tensor, Tensor]:
        if not 0 <= t < self.n:
            raise IndexError(t)
        if self._last is None or self._last[0] != t:
            sam, beit, _, _ = self.transform(self.get_rgb(t)[None], None, "")
            self._last = (t, sam[0].to(self.device), beit[0].to(self.device))
        return self._last[1], self._last[2]


class _ViewSequence(Sequence[Tensor]):
    """One view of a video as the lazy frame sequence ``predict_video`` accepts."""

    def __init__(self, views: _Views, which: int) -> None:
        self.views, self.which = views, which

    def __len__(self) -> int:
        return self.views.n

    def __getitem__(self, t: int | slice) -> Tensor | list[Tensor]:  # type: ignore[override]
        if isinstance(t, slice):
            return [self.views(i)[self.which] for i in range(*t.indices(self.views.n))]
        return self.views(t)[self.which]


class _Rewinding:
    """Frame t of a reader, decoding forwards and starting again when an earlier frame is asked for."""

    def __init__(self, reader: FrameReader, progress: Progress | None) -> None:
        self.reader = reader
        self._it: Iterator[Frame] | None = None
        self._next = 0
        self._last: Frame | None = None
        self.n = 0
        for _ in self.reader:  # a first pass: the count, and every frame decodes before any output
            self.n += 1
            if progress:
                progress("decoded", 1)

    def __call__(self, t: int) -> np.ndarray:
        if self._last is not None and self._next - 1 == t:
            return self._last.rgb
        if self._it is None or t < self._next:
            self._it, self._next = iter(self.reader), 0
        while self._next <= t:
            self._last = next(self._it)
            self._next += 1
        assert self._last is not None
        return self._last.rgb


def _chunks(reader: FrameReader, size: int, progress: Progress | None) -> Iterator[list[Frame]]:
    chunk: list[Frame] = []
    for frame in reader:
        chunk.append(frame)
        if progress:
            progress("decoded", 1)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.inference_mode()
def segment_to_folder(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    reader: FrameReader,
    sentences: Sequence[str],
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "json", "overlay"),
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: Progress | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Path:
    """Segment each sentence in the reader's frames and write the outputs to ``out_dir`` (complete or absent).

    Args:
        sentences: the referring expressions (used as given).
        formats: among ``png``, ``json``, ``overlay`` (see :class:`~mpgsam2.media.outputs.PredictionWriter`).
        chunk_size: frames per independent run (24 for the MeViS protocol), or None for one run over the video.
        progress: told how many frames were decoded and segmented.
        precision / compile: as :func:`mpgsam2.inference.predict_video` (autocast ``bf16``/``fp16``; compiled
            image encoder and memory attention).

    Returns:
        ``out_dir``.

    Raises:
        MediaError: a frame cannot be decoded, the input has no frames or frames of different sizes (the
            message names the file and frame); nothing is written then.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    if not sentences or any(not s.strip() for s in sentences):
        raise ValueError(f"give one or more non-empty sentences, got {list(sentences)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dir = Path(out_dir)
    model = model.to(device).eval()
    transform = ClipTransform(**model.input_sizes, train=False)
    expressions = encode_sentences(tokenizer, sentences, device)

    def run(
        get_rgb: Callable[[int], np.ndarray], n: int, size: tuple[int, int]
    ) -> list[ExpressionPrediction]:
        views = _Views(get_rgb, n, transform, device)
        return predict_video(
            model,
            _ViewSequence(views, 0),
            _ViewSequence(views, 1),
            expressions,
            size,
            precision=precision,
            compile=compile,
        )

    with staged_folder(out_dir, overwrite) as folder:
        writer = PredictionWriter(folder, sentences, formats, reader.output_fps, str(reader.path))
        with writer:
            if chunk_size is not None:
                size: tuple[int, int] | None = None
                for chunk in _chunks(reader, chunk_size, progress):
                    size = size or _size(chunk[0])
                    _check_sizes(reader, chunk, size)
                    predictions = run(lambda t, c=chunk: c[t].rgb, len(chunk), size)
                    _write(writer, chunk, predictions, 0, progress)
            else:
                frames = _Rewinding(reader, progress)
                size = tuple(frames(0).shape[:2])
                predictions = run(frames, frames.n, size)
                # a third pass writes; sizes are checked on it (a frame of another size has no mask)
                for t, frame in enumerate(reader):
                    _check_sizes(reader, [frame], size)
                    _write(writer, [frame], predictions, t, progress)
    return out_dir


def _size(frame: Frame) -> tuple[int, int]:
    return (int(frame.rgb.shape[0]), int(frame.rgb.shape[1]))


def _check_sizes(reader: FrameReader, frames: Sequence[Frame], size: tuple[int, int]) -> None:
    for frame in frames:
        if _size(frame) != size:
            raise MediaError(
                f"{reader.path}: frame {frame.index} is {frame.rgb.shape[1]}x{frame.rgb.shape[0]} (WxH), the first "
                f"is {size[1]}x{size[0]}; all frames of a video must have one size"
            )


def _write(
    writer: PredictionWriter,
    frames: Sequence[Frame],
    predictions: Sequence[ExpressionPrediction],
    offset: int,
    progress: Progress | None,
) -> None:
    for t, frame in enumerate(frames):
        logits = [p.logits[offset + t] for p in predictions]
        writer.add(frame, [(x > 0).numpy() for x in logits], [frame_score(x) for x in logits])
        if progress:
            progress("segmented", 1)
