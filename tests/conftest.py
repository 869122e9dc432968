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
    from data_helpers import synthetic_tokenizer

    return synthetic_tokenizer(tmp_path_factory.mktemp("tok"))
