"""A web page: upload a video or an image, type one sentence per line, get the overlay video and the masks.

    pip install -e ".[app]"
    python -m mpgsam2.app CKPT [--port 7860] [--host 127.0.0.1] [--device cpu]
        [--max-frames 300] [--long-side 1024] [--stride 1] [--chunk-size 24] [--max-sentences 10]
        [--max-upload-mb 500] [--keep-results 20] [--keep-minutes 60] [--queue-size 16]

The page runs the code path of ``python -m mpgsam2.predict`` (:func:`mpgsam2.media.segment_to_folder`) with its
options (frame cap, long side, stride, chunk size; the server's flags set their defaults and upper bounds), shows
the progress frame by frame, and offers the masks as a zip (one folder of PNGs per sentence and ``masks.json``).
Requests run one at a time (the others wait in a bounded queue); each request works in its own folder, removed
after ``--keep-minutes`` or when more than ``--keep-results`` newer ones exist (uploads and the served copies of
the results are removed by Gradio after the same time). Runs on CPU with the demo model.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mpgsam2.media import MediaError, open_frames, segment_to_folder
from mpgsam2.media.reader import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Frame, FrameReader, FrameSelection
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = [
    "PageLimits",
    "RequestResult",
    "ResultStore",
    "build_app",
    "launch",
    "main",
    "make_segment_handler",
    "run_request",
]

MIB = 1024 * 1024
MAX_PAGE_STRIDE = 30  # the page's stride slider ends here (or at the server's default stride, if larger)
MIN_LONG_SIDE = 64  # the page's long-side slider starts here

# progress(frames segmented, frames expected or None when unknown, what is going on)
RequestProgress = Callable[[int, "int | None", str], None]


@dataclass(frozen=True)
class PageLimits:
    """What the server allows; the page shows each as its control's default.

    Attributes:
        max_frames: the default frame cap and the largest a request may ask for.
        long_side: frames whose long side is larger are shrunk to it; the default and the largest allowed.
        stride: the default stride (every n-th frame).
        chunk_size: frames per independent run, the default and the largest allowed (memory stays flat in the
            video's length); 0: the default is one run over the whole video, and a request may ask for any size.
        max_sentences: sentences per request.
        max_upload_mb: the largest upload in MiB (Gradio refuses larger files in the page and at the server).
        keep_results: request folders kept on disk (the oldest go first).
        keep_seconds: how long a request's files are kept after it finished.
        queue_size: requests that may wait while one runs; more are refused with "queue full".
    """

    max_frames: int = 300
    long_side: int = 1024
    stride: int = 1
    chunk_size: int = 24
    max_sentences: int = 10
    max_upload_mb: float = 500
    keep_results: int = 20
    keep_seconds: float = 3600
    queue_size: int = 16

    def __post_init__(self) -> None:
        for name in ("max_frames", "stride", "max_sentences", "keep_results", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.long_side < MIN_LONG_SIDE:
            raise ValueError(f"long_side must be >= {MIN_LONG_SIDE}, got {self.long_side}")
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0: whole video), got {self.chunk_size}")
        if self.max_upload_mb <= 0 or self.keep_seconds <= 0:
            raise ValueError("max_upload_mb and keep_seconds must be > 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_stride(self) -> int:
        return max(MAX_PAGE_STRIDE, self.stride)

    @property
    def max_chunk_size(self) -> int:
        """The largest chunk size a request may ask for (0, the whole video, is allowed only when unbounded)."""
        return self.chunk_size or self.max_frames

    def check(self, max_frames: float, long_side: float, stride: float, chunk_size: float) -> tuple[int, ...]:
        """A request's options as integers, or a ValueError that says what this server allows."""
        values = {"frame cap": max_frames, "long side": long_side, "stride": stride, "chunk size": chunk_size}
        for name, value in values.items():
            if value is None or value != int(value):
                raise ValueError(f"the {name} must be a whole number, got {value}")
        max_frames, long_side, stride, chunk_size = (int(v) for v in values.values())
        if not 1 <= max_frames <= self.max_frames:
            raise ValueError(f"the frame cap must be between 1 and {self.max_frames} here, got {max_frames}")
        if not MIN_LONG_SIDE <= long_side <= self.long_side:
            raise ValueError(
                f"the long side must be between {MIN_LONG_SIDE} and {self.long_side} pixels here, got {long_side}"
            )
        if not 1 <= stride <= self.max_stride:
            raise ValueError(f"the stride must be between 1 and {self.max_stride}, got {stride}")
        smallest = 0 if self.chunk_size == 0 else 1
        if not smallest <= chunk_size <= self.max_chunk_size:
            raise ValueError(
                f"the chunk size must be between {smallest} and {self.max_chunk_size} frames here, got {chunk_size}"
            )
        return max_frames, long_side, stride, chunk_size


class ResultStore:
    """Per-request folders under ``root``: the newest ``max_results`` finished ones are kept, each for
    ``max_age_s`` after it finished. A folder in use is never removed; a failed request's goes at once.

    ``start()`` runs the removal by age in a background thread until ``close()``.
    """

    def __init__(
        self,
        root: str | Path,
        max_results: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_results < 1 or max_age_s <= 0:
            raise ValueError(f"keep at least one result for some time, got {max_results}, {max_age_s} s")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_results, self.max_age_s, self.clock = max_results, max_age_s, clock
        self._finished: OrderedDict[Path, float] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def request(self) -> Iterator[Path]:
        """A new empty folder for one request; when it finishes, the oldest beyond ``max_results`` go."""
        with self._lock:
            self._prune()
            folder = self.root / f"{time.time_ns()}_{uuid.uuid4().hex[:8]}"
            folder.mkdir()
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self._finished[folder] = self.clock()
            self._prune()

    def prune(self) -> list[Path]:
        """Remove the finished folders that are too old or too many; returns them."""
        with self._lock:
            return self._prune()

    def _prune(self) -> list[Path]:
        now = self.clock()
        # finished oldest first: the ones too old are a prefix, then the oldest beyond the count
        removed = [folder for folder, done in self._finished.items() if now - done > self.max_age_s]
        too_many = len(self._finished) - self.max_results
        removed += list(self._finished)[len(removed) : max(len(removed), too_many)]
        for folder in removed:
            del self._finished[folder]
            shutil.rmtree(folder, ignore_errors=True)
        return removed

    def start(self, interval_s: float | None = None) -> None:
        """Remove old folders every ``interval_s`` seconds (default: a quarter of the age limit, 1-60 s)."""
        if self._thread is not None:
            return
        interval = interval_s or min(60.0, max(1.0, self.max_age_s / 4))

        def loop() -> None:
            while not self._stop.wait(interval):
                self.prune()

        self._thread = threading.Thread(target=loop, name="mpgsam2-app-cleanup", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _CappedReader(FrameReader):
    """The first ``cap`` frames of a reader that selects one more: ``capped`` tells whether that one existed
    (an exact answer at the cost of decoding one frame more than kept); ``kept`` counts the last pass."""

    def __init__(self, inner: FrameReader, cap: int | None) -> None:
        super().__init__(inner.path, replace(inner.selection, max_frames=cap), inner.fps)
        self.count = inner.count
        self.inner, self.cap = inner, cap
        self.capped = False
        self.kept = 0

    def __iter__(self) -> Iterator[Frame]:
        frames = iter(self.inner)
        self.kept = 0
        try:
            for frame in frames:
                if self.cap is not None and self.kept == self.cap:
                    self.capped = True
                    return
                self.kept += 1
                yield frame
        finally:
            frames.close()  # type: ignore[attr-defined]  # a generator: closes the container now


@dataclass(frozen=True)
class RequestResult:
    """What one request produced: the overlay video, a zip of the masks, the number of frames segmented and
    whether the input had more frames than the cap."""

    overlay: Path
    archive: Path
    num_frames: int
    capped: bool


def _expected_frames(reader: FrameReader, cap: int | None) -> int | None:
    """The frames the selection will keep, from the count the container declares (None when unknown)."""
    if reader.count is None:
        return None
    expected = math.ceil(reader.count / reader.selection.stride)
    return expected if cap is None else min(expected, cap)


def run_request(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    upload: str | Path,
    text: str,
    workdir: Path,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
    *,
    max_frames: int | None = None,
    long_side: int | None = None,
    stride: int = 1,
    max_sentences: int | None = None,
    progress: RequestProgress | None = None,
) -> RequestResult:
    """One page request: segment the sentences (one per line of ``text``) in the uploaded file.

    Writes ``workdir/result/`` (what ``python -m mpgsam2.predict`` writes) and ``workdir/masks.zip``.

    Args:
        chunk_size: frames per independent run, or None for one run over the video.
        max_frames / long_side / stride: as ``python -m mpgsam2.predict``'s ``--max-frames`` etc.
        progress: told the frames segmented so far, the frames expected (None when unknown) and a description.

    Raises:
        ValueError: no sentence, or more than ``max_sentences``; MediaError: the upload cannot be read (the
            message names it). Nothing is written then.
    """
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ValueError("type one or more sentences, one per line")
    if max_sentences is not None and len(sentences) > max_sentences:
        raise ValueError(f"at most {max_sentences} sentences per request here, got {len(sentences)}")
    cap_probe = None if max_frames is None else max_frames + 1  # one more: tells whether the video was capped
    selection = FrameSelection(stride=stride, max_frames=cap_probe, long_side=long_side)
    reader = _CappedReader(open_frames(upload, selection), max_frames)
    expected = _expected_frames(reader, max_frames)
    counts = {"decoded": 0, "segmented": 0}

    def on_frames(stage: str, n: int) -> None:
        counts[stage] += n
        if progress is not None:
            progress(counts["segmented"], expected, f"segmenting, {counts['decoded']} frames decoded")

    if progress is not None:
        progress(0, expected, "reading the upload")
    out = segment_to_folder(
        model,
        tokenizer,
        reader,
        sentences,
        workdir / "result",
        chunk_size=chunk_size,
        device=device,
        progress=on_frames,
    )
    archive = workdir / "masks.zip"
    partial = workdir / ".masks.zip.partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != "overlay.mp4":
                zf.write(path, path.relative_to(out).as_posix())
    os.replace(partial, archive)
    return RequestResult(out / "overlay.mp4", archive, counts["segmented"], reader.capped)


def _page_message(err: Exception, upload: str | Path) -> str:
    """The error for the page: the upload named as the user named it, not by its path in the server's cache."""
    return str(err).replace(str(upload), Path(upload).name)


def make_segment_handler(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    store: ResultStore,
    limits: PageLimits,
    device: str | torch.device = "cpu",
) -> Callable[..., tuple[str, str, str]]:
    """The page's *Segment* function: (upload, sentences, frame cap, long side, stride, chunk size) -> (overlay
    video, masks zip, status line). Every refusal is a ``gr.Error`` the page shows; a capped video a
    ``gr.Warning`` and the status line."""
    import gradio as gr

    def segment(
        upload: str | None,
        text: str,
        max_frames: float,
        long_side: float,
        stride: float,
        chunk_size: float,
        progress: Any = gr.Progress(),  # noqa: B008  # Gradio's convention: a default argument
    ) -> tuple[str, str, str]:
        if not upload:
            raise gr.Error("upload a video or an image first")
        try:
            max_frames, long_side, stride, chunk_size = limits.check(
                max_frames, long_side, stride, chunk_size
            )
            with store.request() as folder:
                result = run_request(
                    model,
                    tokenizer,
                    upload,
                    text or "",
                    folder,
                    chunk_size or None,
                    device,
                    max_frames=max_frames,
                    long_side=long_side,
                    stride=stride,
                    max_sentences=limits.max_sentences,
                    progress=lambda done, total, desc: progress((done, total), desc=desc, unit="frames"),
                )
        except (ValueError, MediaError) as err:  # MediaError names the file: show it, not a traceback
            raise gr.Error(_page_message(err, upload)) from err
        status = f"Segmented {result.num_frames} frame{'s' * (result.num_frames != 1)}."
        if result.capped:
            status = (
                f"The video has more frames than the frame cap: only the first {result.num_frames}"
                + (f" (at stride {stride})" if stride > 1 else "")
                + f" were segmented. Raise the frame cap (at most {limits.max_frames} here) or the stride, or "
                "cut the video."
            )
            gr.Warning(status, duration=None)
        return str(result.overlay), str(result.archive), status

    return segment


def build_app(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    store: ResultStore,
    limits: PageLimits | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """The Gradio page (``gradio.Blocks``, queued: one request at a time); serve it with :func:`launch`."""
    import gradio as gr

    limits = limits or PageLimits()
    keep = int(math.ceil(limits.keep_seconds))
    # Gradio's own files (uploads, the copies of the results it serves) go after the same time as ours
    with gr.Blocks(
        title="MPG-SAM 2", analytics_enabled=False, delete_cache=(min(60, max(1, keep // 4)), keep)
    ) as app:
        gr.Markdown("## MPG-SAM 2: segment the objects your sentences describe")
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label=f"Video or image (up to {limits.max_upload_mb:g} MB)",
                    file_types=list(VIDEO_SUFFIXES + IMAGE_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                text = gr.Textbox(
                    label=f"Sentences (one per line, at most {limits.max_sentences})",
                    lines=4,
                    elem_id="sentences",
                )
                with gr.Accordion("Options", open=False):
                    max_frames = gr.Slider(
                        1,
                        limits.max_frames,
                        value=limits.max_frames,
                        step=1,
                        label="Frame cap",
                        info="at most this many frames of the video are segmented",
                        elem_id="max_frames",
                    )
                    long_side = gr.Slider(
                        MIN_LONG_SIDE,
                        limits.long_side,
                        value=limits.long_side,
                        step=1,
                        label="Long side (pixels)",
                        info="larger frames are shrunk to it; the masks have the shrunk size",
                        elem_id="long_side",
                    )
                    stride = gr.Slider(
                        1,
                        limits.max_stride,
                        value=limits.stride,
                        step=1,
                        label="Stride",
                        info="keep every n-th frame",
                        elem_id="stride",
                    )
                    chunk_size = gr.Slider(
                        0 if limits.chunk_size == 0 else 1,
                        limits.max_chunk_size,
                        value=limits.chunk_size,
                        step=1,
                        label="Chunk size (frames)",
                        info="independent runs of this many frames"
                        + (" (0: one run over the whole video)" if limits.chunk_size == 0 else ""),
                        elem_id="chunk_size",
                    )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay", interactive=False)
                masks = gr.File(label="Masks (PNGs + masks.json)", elem_id="masks", interactive=False)
                status = gr.Markdown(elem_id="status")
        button.click(
            make_segment_handler(model, tokenizer, store, limits, device),
            inputs=[upload, text, max_frames, long_side, stride, chunk_size],
            outputs=[overlay, masks, status],
        )
    return app.queue(default_concurrency_limit=1, max_size=limits.queue_size)


def launch(app: Any, store: ResultStore, limits: PageLimits, **kwargs: Any) -> Any:
    """Start removing old results and serve the page with the upload limit (``kwargs`` go to ``launch``)."""
    store.start()
    return app.launch(max_file_size=limits.max_upload_bytes, allowed_paths=[str(store.root)], **kwargs)


def main(argv: list[str] | None = None) -> int:
    defaults = PageLimits()
    parser = argparse.ArgumentParser(prog="python -m mpgsam2.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="train.py checkpoint, our export folder or a released MPG-SAM 2 folder")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece model (default: the checkpoint's own)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    limits = parser.add_argument_group("limits (the page's defaults and upper bounds)")
    limits.add_argument(
        "--max-frames", type=int, default=defaults.max_frames, help="frame cap per video (%(default)s)"
    )
    limits.add_argument(
        "--long-side",
        type=int,
        default=defaults.long_side,
        help="shrink frames whose long side is larger (pixels, %(default)s: SAM 2's input size)",
    )
    limits.add_argument("--stride", type=int, default=defaults.stride, help="default stride (%(default)s)")
    limits.add_argument(
        "--chunk-size",
        type=int,
        default=defaults.chunk_size,
        help="frames per independent run (%(default)s; 0: whole-video runs, any size allowed)",
    )
    limits.add_argument(
        "--max-sentences", type=int, default=defaults.max_sentences, help="per request (%(default)s)"
    )
    limits.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.max_upload_mb,
        help="largest upload (MiB, %(default)s)",
    )
    limits.add_argument(
        "--keep-results",
        type=int,
        default=defaults.keep_results,
        help="request folders kept on disk, newest first (%(default)s)",
    )
    limits.add_argument(
        "--keep-minutes",
        type=float,
        default=defaults.keep_seconds / 60,
        help="minutes a request's files are kept after it finished (%(default)s)",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="requests waiting while one runs (%(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        page_limits = PageLimits(
            max_frames=args.max_frames,
            long_side=args.long_side,
            stride=args.stride,
            chunk_size=args.chunk_size,
            max_sentences=args.max_sentences,
            max_upload_mb=args.max_upload_mb,
            keep_results=args.keep_results,
            keep_seconds=args.keep_minutes * 60,
            queue_size=args.queue_size,
        )
    except ValueError as err:
        parser.error(str(err))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: nothing sent anywhere
    from mpgsam2.weights import load_model

    loaded = load_model(args.ckpt)
    model, tokenizer_path = loaded.model, args.tokenizer or loaded.tokenizer_path
    if tokenizer_path is None:
        parser.error(f"{args.ckpt} names no tokenizer: pass --tokenizer <beit3.spm>")
    store = ResultStore(
        tempfile.mkdtemp(prefix="mpgsam2_app_"), page_limits.keep_results, page_limits.keep_seconds
    )
    try:
        app = build_app(model, Beit3Tokenizer(tokenizer_path), store, page_limits, args.device)
        launch(app, store, page_limits, server_name=args.host, server_port=args.port)
    finally:
        store.close()
        shutil.rmtree(store.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
