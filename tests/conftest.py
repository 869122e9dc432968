"""Shared fixtures: where the parity fixture is, the tiny model, the synthetic tokenizer, a trained demo run.

The tests mirror the package (tests/modeling/, tests/data/, ...); the helpers they import are in tests/helpers/
(``from helpers.tiny import make_tiny_model``: this directory is on ``sys.path`` because this file is in it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpgsam2.parity import DEFAULT_FIXTURE as FIXTURE_DIR


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The original-code parity fixture (tests/fixtures/original_parity, data computed by the original code)."""
    if not (FIXTURE_DIR / "config.json").is_file():
        pytest.fail(f"parity fixture not found at {FIXTURE_DIR}")
    return FIXTURE_DIR


@pytest.fixture
def tiny_model():
    """The one test model (``conf/model/{beit3,sam2}/test.yaml``), random weights of seed 0, in eval mode, built
    for each test (a test may train or change it); ``helpers.tiny.make_tiny_model`` builds it with options."""
    from helpers.tiny import make_tiny_model

    return make_tiny_model().eval()


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset's word tokenizer (a sentencepiece model), for data modules that need one."""
    from helpers.datasets import synthetic_tokenizer

    return synthetic_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny demo model after 2 steps: its checkpoint and its (validation-ready) data module."""
    from helpers.configs import TINY_SYNTHETIC, compose_config

    import train as train_entry

    tmp = tmp_path_factory.mktemp("demo_run")
    cfg = compose_config(
        "train",
        ["experiment=demo", *TINY_SYNTHETIC, "logger=none", "trainer.max_steps=2", "validate=false"],
        tmp,
    )
    train_entry.run(cfg)
    system, datamodule = train_entry.build_components(cfg)
    datamodule.setup("validate")
    return tmp / "run" / "checkpoints" / "final.ckpt", datamodule
