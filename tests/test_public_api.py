"""``import mpgsam2`` gives the public API by name, loading each module only when its name is first used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mpgsam2


@pytest.mark.parametrize("name", mpgsam2.__all__)
def test_each_public_name_is_the_defining_module_s_object(name: str) -> None:
    value = getattr(mpgsam2, name)
    assert value.__module__.startswith("mpgsam2.") and value.__name__ == name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="predict_vidoe"):
        mpgsam2.predict_vidoe  # noqa: B018


@pytest.mark.subprocess
def test_importing_the_readers_does_not_load_the_model_code() -> None:
    code = (
        "import sys, mpgsam2, mpgsam2.data; print(any(m.startswith('mpgsam2.modeling') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
