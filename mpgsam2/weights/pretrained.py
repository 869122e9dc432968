"""Our export format (:func:`save_mpgsam2`) and the reader of model folders behind :func:`mpgsam2.load_model`.

    model = mpgsam2.load_model("path/to/MPG-SAM2-ytvos").model   # released HF folder (config.json + weights)
    model = mpgsam2.load_model("runs/x/export").model            # our export (config.json + model.safetensors)
    model = MPGSAM2(MPGSAM2Config.from_presets("large", "sam2_hiera_l.yaml"))
    load_weights(model, "beit3_large_patch16_224.pth", fmt="beit3")  # the original's training start
    load_weights(model, "sam2_hiera_large.pt", fmt="sam2")

``load_mpgsam2`` and ``init_from_components`` are deprecated aliases of those (kept for one release). Nothing is
downloaded: every path is the user's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from mpgsam2.modeling.config import load_config_file
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.weights.convert import convert_mpgsam2
from mpgsam2.weights.io import CheckpointError, read_state_dict
from mpgsam2.weights.loader import LoadReport, load_into, load_weights

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


def read_model_folder(
    path: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    hf_gamma_compat: bool = False,
) -> MPGSAM2:
    """Build and load a model from a folder holding ``config.json`` and weights (ours or a released MPG-SAM 2
    folder, single or sharded), or from a single weights file (a DeepSpeed ``module.evf_model.`` export or a
    ``pytorch_model.bin``) together with ``config_path``. Called through :func:`mpgsam2.load_model`.

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
    return model


def load_mpgsam2(
    path: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    hf_gamma_compat: bool = False,
    map_location: str | torch.device = "cpu",
) -> MPGSAM2:
    """Deprecated alias (kept for one release): the model of ``mpgsam2.load_model(path, hf_gamma_compat,
    config_path=config_path)`` for a folder or a single weights file (:func:`read_model_folder`, which it calls),
    moved to ``map_location``."""
    return read_model_folder(path, config_path=config_path, hf_gamma_compat=hf_gamma_compat).to(map_location)


def init_from_components(
    model: MPGSAM2,
    *,
    beit3: str | os.PathLike[str] | None = None,
    sam2: str | os.PathLike[str] | None = None,
) -> list[LoadReport]:
    """Deprecated alias (kept for one release) of ``load_weights(model, beit3, fmt="beit3")`` then
    ``load_weights(model, sam2, fmt="sam2")``: a fresh model from the official BEiT-3 ``.pth`` and / or SAM 2
    ``.pt`` (the original's training start), each file's gaps of a full model declared."""
    return [load_weights(model, path, fmt=fmt) for path, fmt in ((beit3, "beit3"), (sam2, "sam2")) if path]
