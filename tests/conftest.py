"""Shared test helpers: where the parity fixture is, and small random models."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original_parity"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """The original-code parity fixture (../shared/fixtures/original_parity beside the repository)."""
    if not (FIXTURE_DIR / "config.json").is_file():
        pytest.fail(f"parity fixture not found at {FIXTURE_DIR}; the repository expects ../shared beside it")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset's word tokenizer (a sentencepiece model), for data modules that need one."""
    from data_helpers import synthetic_tokenizer

    return synthetic_tokenizer(tmp_path_factory.mktemp("tok"))
