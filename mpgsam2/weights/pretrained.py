"""Building models from weights a user has: released MPG-SAM 2 folders, our exports, or BEiT-3 + SAM 2 files.

    model = load_mpgsam2("path/to/MPG-SAM2-ytvos")            # released HF folder (config.json + weights)
    model = load_mpgsam2("runs/x/export")                     # our export (config.json + model.safetensors)
    model = MPGSAM2(MPGSAM2Config.from_presets("large", "sam2_hiera_l.yaml"))
    init_from_components(model, beit3="beit3_large_patch16_224.pth", sam2="sam2_hiera_large.pt")

Nothing is downloaded: every path is the user's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from mpgsam2.modeling.config import load_config_file
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.weights.convert import convert_beit3, convert_mpgsam2, convert_sam2
from mpgsam2.weights.io import CheckpointError, read_state_dict
from mpgsam2.weights.loader import BEIT3_CHECKPOINT_GAPS, SAM2_CHECKPOINT_GAPS, LoadReport, load_into

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"


def save_mpgsam2(model: MPGSAM2, directory: str | os.PathLike[str]) -> Path:
    """Export weights (safetensors, our key names) and the model config (JSON) to ``directory``.

    Both files are written under temporary names and renamed, so an interrupted export leaves no half file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights_tmp = directory / (EXPORT_WEIGHTS + ".tmp")
    save_file(state, str(weights_tmp), metadata={"format": "pt", "producer": "mpgsam2"})
    config_tmp = directory / (EXPORT_CONFIG + ".tmp")
    config_tmp.write_text(json.dumps({"mpgsam2_config": model.config.to_dict()}, indent=2, default=str))
    weights_tmp.replace(directory / EXPORT_WEIGHTS)
    config_tmp.replace(directory / EXPORT_CONFIG)
    return directory


def load_mpgsam2(
    path: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    hf_gamma_compat: bool = False,
    map_location: str | torch.device = "cpu",
) -> MPGSAM2:
    """Build and load a model from a folder holding ``config.json`` and weights (ours or a released MPG-SAM 2
    folder, single or sharded), or from a single weights file (a DeepSpeed ``module.evf_model.`` export or a
    ``pytorch_model.bin``) together with ``config_path``.

    hf_gamma_compat: reproduce the original's from_pretrained, which left the memory-encoder layer scales at
    1e-6 (see ``convert_mpgsam2``). Off by default: the checkpoint's values are loaded.
    """
    path = Path(path)
    if config_path is None:
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: a single weights file needs config_path= (the model's config.json)"
            )
        config_path = path / EXPORT_CONFIG
    config = load_config_file(config_path)
    state = read_state_dict(path)
    ours = json.loads(Path(config_path).read_text()).get("mpgsam2_config") is not None
    state = state if ours else convert_mpgsam2(state, hf_gamma_compat=hf_gamma_compat)
    model = MPGSAM2(config)
    load_into(model, state, source=str(path))
    return model.to(map_location)


def init_from_components(
    model: MPGSAM2,
    *,
    beit3: str | os.PathLike[str] | None = None,
    sam2: str | os.PathLike[str] | None = None,
) -> list[LoadReport]:
    """Initialise a fresh model from the official BEiT-3 ``.pth`` and/or SAM 2 ``.pt`` (the original's training
    start). Every key of the file must land in the model and vice versa, except the parts the other file or the
    new MPG-SAM 2 modules provide; anything else is an error naming the file."""
    reports = []
    if beit3 is not None:
        state = convert_beit3(read_state_dict(beit3))
        reports.append(load_into(model, state, source=str(beit3), allow_missing=BEIT3_CHECKPOINT_GAPS))
    if sam2 is not None:
        state = convert_sam2(read_state_dict(sam2))
        reports.append(load_into(model, state, source=str(sam2), allow_missing=SAM2_CHECKPOINT_GAPS))
    return reports
