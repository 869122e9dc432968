"""MPG-SAM 2 model code (plain PyTorch)."""

from mpgsam2.modeling.config import MPGSAM2Config, config_from_original, load_config_file
from mpgsam2.modeling.mpgsam2 import MPGSAM2, ClipOutput, VideoSession

__all__ = [
    "MPGSAM2",
    "MPGSAM2Config",
    "ClipOutput",
    "VideoSession",
    "config_from_original",
    "load_config_file",
]
