"""Shared test helpers: where the parity fixture is, and small random models."""

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
