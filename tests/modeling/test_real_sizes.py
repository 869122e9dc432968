"""Every model a user can name, at its real size, on the meta device (shapes only, nothing allocated): a released
folder's ``config.json`` as the original writes it, every BEiT-3 preset x SAM 2 size and version, every ``size=`` of
the recipes composed as ``train.py`` composes them. Each builds, answers ``input_sizes``, gets the transforms the
entry points build from it (their views go through the model's forward on the meta device), and has the original's
parameter counts. Then a released-layout folder with the BEiT-3 image size left to its default (as the original's
``config.json``) goes through ``python -m mpgsam2.predict`` and ``eval.py`` as subprocesses.

The expected counts are facts about the original, not outputs of this code:

- ``tests/fixtures/original_parity/full_size_keys.json``: the key lists and parameter counts of the original's
  ``EvfSamModel`` built by the original code (no weights): ``large`` = EvfConfig(hidden_size=1024,
  mm_extractor_scale='large') with sam2_hiera_l.yaml, 919,446,580 parameters of which 706,743,300 trainable (spec
  §0.9: 919.4 M / 706.7 M); ``tiny`` = the same with BEiT-3 base (hidden 768) and the Hiera-T trunk (the spec's
  manifest of the advertised tiny model, §5.2: about 274 M / 247 M).
- ``tests/fixtures/sam2_official_keys.json``: the key shapes of the eight official SAM 2 / 2.1 checkpoints (generated
  from facebookresearch/sam2's ``SAM2Base.state_dict()``).

MPG-SAM 2 is BEiT-3 with the MPG heads + a stock SAM 2 + the MPG fusion blocks in the SAM 2 mask decoder, which are
the same for every SAM 2 size (spec §5.1). So the expected count of BEiT-3 <b> + SAM 2 <config> is: the manifest's
non-SAM part at <b>'s width + the official SAM 2 checkpoint's parameters + the fusion blocks (the large manifest's
SAM 2 part minus the official Hiera-L checkpoint). The frozen part is the official checkpoint's image encoder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import CONF_DIR, compose_config
from helpers.datasets import synthetic_tokenizer, write_ytvos_dataset
from helpers.tiny import tiny_preset
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file

from mpgsam2.build import build_model, sam2_config_name
from mpgsam2.data import ClipTransform
from mpgsam2.modeling.config import MPGSAM2Config, config_from_original, load_config_file
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.presets import SAM2_SIZES
from mpgsam2.parity import DEFAULT_FIXTURE
from mpgsam2.utils import parameter_counts
from mpgsam2.weights import convert_mpgsam2_to_original
from mpgsam2.weights.checkpoints import RELEASED_TOKENIZER

REPO = Path(__file__).resolve().parents[2]
SAM2_KEYS_JSON = Path(__file__).resolve().parents[1] / "fixtures" / "sam2_official_keys.json"
# the two views of every released model: BEiT-3 at 224 x 224 (beit3_*_patch16_224), SAM 2 at 1024 x 1024 (spec §1.1)
REAL_SIZES = {"sam_size": 1024, "beit_size": 224}
# which original manifest carries the BEiT-3 side at a preset's width
MANIFEST_OF_PRESET = {"large": "large", "base": "tiny"}


# --------------------------------------------------------------------------------------------- expected counts


@cache
def _manifests() -> dict:
    return json.loads((DEFAULT_FIXTURE / "full_size_keys.json").read_text())


def _params(entries: list[dict], prefix: str = "", exclude: str | None = None) -> int:
    return sum(
        math.prod(e["shape"])
        for e in entries
        if e["kind"] == "parameter"
        and e["key"].startswith(prefix)
        and (exclude is None or not e["key"].startswith(exclude))
    )


@cache
def _official_sam2() -> dict[str, tuple[int, int]]:
    """Official SAM 2 config file name (``sam2.1_hiera_t.yaml``) -> (parameters, image-encoder parameters)."""
    about = json.loads(SAM2_KEYS_JSON.read_text())
    # the original's buffers (persistent, so in the checkpoints too) are not parameters
    buffers = {
        e["key"].removeprefix("visual_model.")
        for e in _manifests()["large"]["entries"]
        if e["kind"] == "buffer"
    }
    out = {}
    for name, keys in about["keys"].items():
        params = {k: s for k, s in keys.items() if k not in buffers}
        total = sum(math.prod(s) for s in params.values())
        encoder = sum(math.prod(s) for k, s in params.items() if k.startswith("image_encoder."))
        out[about["configs"][name].rsplit("/", 1)[-1]] = (total, encoder)
    return out


def original_counts(beit3: str, sam2_file: str) -> tuple[int, int]:
    """(total, trainable) parameters of MPG-SAM 2 with BEiT-3 ``beit3`` and SAM 2 ``sam2_file``, Hiera frozen."""
    large = _manifests()["large"]["entries"]
    beit_side = _params(_manifests()[MANIFEST_OF_PRESET[beit3]]["entries"], exclude="visual_model.")
    fusion_blocks = _params(large, prefix="visual_model.") - _official_sam2()["sam2_hiera_l.yaml"][0]
    sam2_total, sam2_encoder = _official_sam2()[sam2_file]
    total = beit_side + sam2_total + fusion_blocks
    return total, total - sam2_encoder


def test_the_expected_counts_are_the_original_s() -> None:
    """The composition rule gives back the two models the original built, and the spec's rounded figures."""
    for name, (beit3, sam2_file) in {
        "large": ("large", "sam2_hiera_l.yaml"),
        "tiny": ("base", "sam2_hiera_t.yaml"),
    }.items():
        manifest = _manifests()[name]
        expected = (manifest["num_parameters"], manifest["num_trainable_parameters"])
        assert original_counts(beit3, sam2_file) == expected
    total, trainable = original_counts("large", "sam2_hiera_l.yaml")
    assert (round(total / 1e6, 1), round(trainable / 1e6, 1)) == (919.4, 706.7)  # spec §0.9


# ------------------------------------------------------------------------------------------------ helpers


def _counts(model: MPGSAM2) -> tuple[int, int]:
    counts = parameter_counts(model)  # what train.py logs
    return counts["params/total"], counts["params/trainable"]


def _views_go_through(model: MPGSAM2, transform: ClipTransform) -> None:
    """The transform's views of a small clip have the shapes the model takes: a forward on the meta device with
    inputs of those shapes (BEiT-3 refuses any other image side) gives masks at the SAM 2 side."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    masks = np.zeros((2, 24, 32), dtype=bool) if transform.train else None
    sam, beit, target, _ = transform(frames, masks, "the cat", rng=0)
    s = model.input_sizes["sam_size"]
    assert (
        tuple(sam.shape) == (2, 3, s, s) and tuple(beit.shape)[-2:] == (model.input_sizes["beit_size"],) * 2
    )
    assert target is None or tuple(target.shape) == (2, s, s)
    with torch.device("meta"):
        ids = torch.zeros(1, 6, dtype=torch.long)
        out = model.train(transform.train)(
            torch.empty(1, *sam.shape), torch.empty(1, *beit.shape), ids, torch.zeros(1, 6, dtype=torch.bool)
        )
    assert tuple(out.pred_masks.shape) == (1, 2, 1, s, s)


def _released_config_json(scale: str, **extra: object) -> dict:
    """A released ``config.json`` as the original's ``EvfConfig.save_pretrained`` writes it: no size overrides."""
    width = {"base": 768, "large": 1024}[scale]
    return {
        "architectures": ["EvfSamModel"],
        "model_type": "evf",
        "mm_extractor_scale": scale,
        "hidden_size": width,
        "out_dim": 256,
        "sam_scale": "huge",
        "torch_dtype": "float32",
        **extra,
    }


# --------------------------------------------------------------------------------------- every nameable model


@pytest.mark.parametrize("scale", ["base", "large"])
def test_a_released_config_json_builds_at_real_size(scale: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_released_config_json(scale)))
    with torch.device("meta"):
        model = MPGSAM2(load_config_file(path))
    assert model.input_sizes == REAL_SIZES
    # the original always built sam2_hiera_l.yaml (spec; config_from_original)
    assert _counts(model) == original_counts(scale, "sam2_hiera_l.yaml")
    _views_go_through(model, ClipTransform(**model.input_sizes, train=False))  # predict / eval.py's transform


def test_an_export_of_a_preset_model_builds_at_real_size(tmp_path: Path) -> None:
    """Our export (``save_mpgsam2``) of a ``from_presets`` model stores its config as built: no image size."""
    config = MPGSAM2Config.from_presets("large", "sam2.1_hiera_b+.yaml")
    assert "img_size" not in config.beit3  # the records stay as they were: nothing added to stored configs
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"mpgsam2_config": config.to_dict()}))
    with torch.device("meta"):
        model = MPGSAM2(load_config_file(path))
    assert model.input_sizes == REAL_SIZES
    assert _counts(model) == original_counts("large", "sam2.1_hiera_b+.yaml")


PAIRS = [(b, s, v) for b in ("base", "large") for s in SAM2_SIZES for v in ("2.0", "2.1")]


@pytest.mark.parametrize(("beit3", "sam2", "version"), PAIRS)
def test_every_preset_pair_builds_at_real_size(beit3: str, sam2: str, version: str) -> None:
    """The config files (conf/model/beit3/<b>.yaml, conf/model/sam2/<s>.yaml) and ``from_presets``."""
    sam2_file = sam2_config_name(sam2, version)
    beit3_yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "beit3" / f"{beit3}.yaml"))
    sam2_yaml = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "sam2" / f"{sam2}.yaml"))
    with torch.device("meta"):
        models = {
            "conf": build_model(beit3_yaml, {**sam2_yaml, "version": version}),
            "from_presets": MPGSAM2(MPGSAM2Config.from_presets(beit3, sam2_file)),
        }
    for how, model in models.items():
        assert model.input_sizes == REAL_SIZES, how
        assert _counts(model) == original_counts(beit3, sam2_file), how


# size= of the recipes: the paper's three models (BEiT-3 large + Hiera-L, base + Hiera-B+, base + Hiera-T; SAM 2.0)
SIZES = {
    "ytvos_large": ("large", "sam2_hiera_l.yaml"),
    "mevis_base": ("base", "sam2_hiera_b+.yaml"),
    "refcoco_tiny": ("base", "sam2_hiera_t.yaml"),
}


@pytest.mark.parametrize("experiment", sorted(SIZES))
def test_each_recipe_size_builds_what_train_py_builds(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [
            f"experiment={experiment}",
            "model.weights.mpgsam2=null",
            "model.weights.beit3=null",
            "model.weights.sam2=null",
            f"data.root={tmp_path / 'data'}",
            f"data.tokenizer_path={tmp_path / 'beit3.spm'}",
        ],
        tmp_path,
    )
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert model.input_sizes == REAL_SIZES
    assert _counts(model) == original_counts(*SIZES[experiment])
    datamodule = instantiate(cfg.data, **model.input_sizes)  # as train.py
    for transform in (datamodule.train_transform(), datamodule.eval_transform()):
        assert (transform.sam_size, transform.beit_size) == (1024, 224)
        _views_go_through(model, transform)


# ------------------------------------------------------------------ a released-layout folder through the CLIs


def _flat_overrides(settings: dict, prefix: str = "++model") -> list[str]:
    """A nested SAM 2 settings mapping as the Hydra overrides a released config.json lists."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += _flat_overrides(value, f"{prefix}.{key}")
        else:
            out.append(f"{prefix}.{key}={json.dumps(value).replace(' ', '')}")
    return out


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A released-layout folder: the original's ``config.json`` keys (BEiT-3 width and depth overridden, its image
    size left to the default, the tiny SAM 2 as ``sam2_hydra_overrides``), random weights under the original's key
    names (``model.safetensors``), and ``sentencepiece.bpe.model``."""
    folder = tmp_path_factory.mktemp("released")
    beit3, sam2 = tiny_preset()
    config_json = _released_config_json(
        "base",
        hidden_size=beit3["embed_dim"],
        out_dim=sam2["settings"]["memory_attention"]["d_model"],
        beit_overrides={
            "encoder_embed_dim": beit3["embed_dim"],
            "encoder_attention_heads": beit3["num_heads"],
            "encoder_ffn_embed_dim": beit3["ffn_dim"],
            "encoder_layers": 1,
            "vocab_size": beit3["vocab_size"],
        },
        sam2_config_name=sam2_config_name(sam2["size"], sam2["version"]),
        sam2_hydra_overrides=_flat_overrides(sam2["settings"]),
    )
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))
    torch.manual_seed(0)
    model = MPGSAM2(config_from_original(config_json))
    assert model.input_sizes["beit_size"] == 224  # BEiT-3's default, named nowhere in the folder
    save_file(dict(convert_mpgsam2_to_original(model.state_dict())), str(folder / "model.safetensors"))
    (folder / RELEASED_TOKENIZER).write_bytes(synthetic_tokenizer(folder / "tok").read_bytes())
    return folder


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.subprocess
def test_predict_and_eval_run_on_a_released_folder_without_size_keys(
    released_folder: Path, tmp_path: Path
) -> None:
    assert "img_size" not in (released_folder / "config.json").read_text()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        rgb = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(frames / f"{i:05d}.png")
    out = tmp_path / "out"
    _run(["-m", "mpgsam2.predict", str(released_folder), str(frames), "the red square", "--out", str(out)])
    record = json.loads((out / "masks.json").read_text())
    assert [f["name"] for f in record["frames"]] == ["00000", "00001", "00002"]
    masks = sorted((out / "00_the_red_square").glob("*.png"))
    assert len(masks) == 3 and all(Image.open(m).size == (40, 30) for m in masks)

    root = write_ytvos_dataset(
        tmp_path / "ytvos",
        "valid",
        {"va": {"num_frames": 2, "objects": {1: None}, "expressions": {"0": ("the red square", 1)}}},
        annotations=False,
        obj_ids_in_json=False,
    )
    run_dir = tmp_path / "eval"
    proc = _run(
        [
            "eval.py",
            f"ckpt={released_folder}",
            "data=ytvos",
            f"data.root={root}",
            "data.num_workers=0",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir / "submission.zip")
    assert (run_dir / "submission.zip").is_file()
