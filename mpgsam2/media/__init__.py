"""Your own media in and out: frame readers (video files, folders, images), the outputs of a prediction (mask
PNGs, ``masks.json``, an overlay video), the prediction loop shared by ``mpgsam2.predict`` and ``mpgsam2.app``,
and the synthetic demo clip."""

from mpgsam2.media.demo import render_demo_video
from mpgsam2.media.display import Orientation
from mpgsam2.media.outputs import FORMATS, PredictionWriter, draw_overlay, staged_folder
from mpgsam2.media.reader import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Frame,
    FrameReader,
    FrameSelection,
    MediaError,
    open_frames,
    parse_position,
)
from mpgsam2.media.segment import encode_sentences, frame_score, segment_to_folder
from mpgsam2.media.video import VideoWriter

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Frame",
    "FrameReader",
    "FrameSelection",
    "MediaError",
    "Orientation",
    "PredictionWriter",
    "VideoWriter",
    "draw_overlay",
    "encode_sentences",
    "frame_score",
    "open_frames",
    "parse_position",
    "render_demo_video",
    "segment_to_folder",
    "staged_folder",
]
