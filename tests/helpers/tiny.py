"""The one test model of the tests, ``benchmarks/`` and the demo (`conf/model/{beit3,sam2}/test.yaml`, random weights:
BEiT-3 width 64, SAM width 32, 64 px SAM input; not the paper's tiny size), and random inputs for it."""

from __future__ import annotations

import torch

from helpers.configs import CONF_DIR
from mpgsam2.build import model_config
from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.presets import merge_settings


def tiny_preset() -> tuple[dict, dict]:
    """(beit3, sam2) of ``conf/model/{beit3,sam2}/test.yaml``: the test model."""
    from omegaconf import OmegaConf

    beit3 = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "beit3" / "test.yaml"))
    sam2 = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "sam2" / "test.yaml"))
    return beit3, sam2


def tiny_config(sam2_settings: dict | None = None, **options) -> MPGSAM2Config:
    """The test model's config (``conf/model/{beit3,sam2}/test.yaml``: BEiT-3 width 64, SAM width 32, 64 px),
    with ``sam2_settings`` merged over its SAM 2 settings and ``options`` set."""
    beit3, sam2 = tiny_preset()
    sam2["settings"] = merge_settings(sam2["settings"], sam2_settings or {})
    return model_config(beit3, sam2, **options)


def make_tiny_model(sam2_settings: dict | None = None, *, seed: int = 0, **options) -> MPGSAM2:
    """The test model of :func:`tiny_config` (same arguments), its random weights drawn after
    ``torch.manual_seed(seed)``, in training mode as ``MPGSAM2`` is built (the image encoder frozen unless
    ``freeze_image_encoder=False``). The ``tiny_model`` fixture of tests/conftest.py is this in eval mode."""
    torch.manual_seed(seed)
    return MPGSAM2(tiny_config(sam2_settings, **options))


def random_clip(model: MPGSAM2, frames: int, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = model.sam.image_size
    hb = model.input_sizes["beit_size"]
    sam = torch.randn(batch, frames, 3, s, s, generator=g)
    beit = torch.randn(batch, frames, 3, hb, hb, generator=g)
    ids = torch.randint(4, 40, (batch, 7), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return sam, beit, ids, torch.zeros_like(ids, dtype=torch.bool)
