"""A local web page: upload a video or an image, type one sentence per line, get the overlay video and the masks.

    pip install -e ".[app]"
    python -m mpgsam2.app CKPT [--port 7860] [--host 127.0.0.1] [--device cpu] [--chunk-size 24]

The page runs the code path of ``python -m mpgsam2.predict`` (:func:`mpgsam2.media.segment_to_folder`) and
offers the masks as a zip (one folder of PNGs per sentence and ``masks.json``). Runs on CPU with the demo model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

from mpgsam2.media import MediaError, open_frames, segment_to_folder
from mpgsam2.media.reader import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = ["build_app", "main", "run_request"]


def run_request(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    upload: str | Path,
    text: str,
    workdir: Path,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Path, Path]:
    """One page request: segment the sentences (one per line of ``text``) in the uploaded file.

    Returns:
        The overlay video and a zip of the masks (sentence folders of PNGs and ``masks.json``).

    Raises:
        ValueError: no sentence; MediaError: the upload cannot be read (the message names it).
    """
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ValueError("type one or more sentences, one per line")
    out = workdir / uuid.uuid4().hex
    segment_to_folder(
        model, tokenizer, open_frames(upload), sentences, out, chunk_size=chunk_size, device=device
    )
    archive = out.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != "overlay.mp4":
                zf.write(path, path.relative_to(out).as_posix())
    return out / "overlay.mp4", archive


def build_app(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    workdir: Path,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """The Gradio page (``gradio.Blocks``); ``.launch()`` it."""
    import gradio as gr

    def segment(upload: str | None, text: str) -> tuple[str, str]:
        if not upload:
            raise gr.Error("upload a video or an image first")
        try:
            overlay, archive = run_request(model, tokenizer, upload, text or "", workdir, chunk_size, device)
        except (ValueError, MediaError) as err:  # MediaError names the file: show it, not a traceback
            raise gr.Error(str(err)) from err
        return str(overlay), str(archive)

    with gr.Blocks(title="MPG-SAM 2", analytics_enabled=False) as app:
        gr.Markdown("## MPG-SAM 2: segment the objects your sentences describe")
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label="Video or image",
                    file_types=list(VIDEO_SUFFIXES + IMAGE_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                text = gr.Textbox(label="Sentences (one per line)", lines=4, elem_id="sentences")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay", interactive=False)
                masks = gr.File(label="Masks (PNGs + masks.json)", elem_id="masks", interactive=False)
        button.click(segment, inputs=[upload, text], outputs=[overlay, masks])
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpgsam2.app", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="train.py checkpoint, our export folder or a released MPG-SAM 2 folder")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece model (default: the checkpoint's own)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--chunk-size", type=int, default=None, help="frames per independent chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: nothing sent anywhere
    from mpgsam2.predict import load_model_for_inference

    model, own_tokenizer = load_model_for_inference(args.ckpt)
    tokenizer_path = args.tokenizer or own_tokenizer
    if tokenizer_path is None:
        parser.error(f"{args.ckpt} names no tokenizer: pass --tokenizer <beit3.spm>")
    workdir = Path(tempfile.mkdtemp(prefix="mpgsam2_app_"))
    try:
        app = build_app(model, Beit3Tokenizer(tokenizer_path), workdir, args.chunk_size, args.device)
        app.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(workdir)])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
