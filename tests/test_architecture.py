"""The import rules of the architecture, read from the code: model code knows no Lightning, Hydra, data readers,
metrics or entry points; readers know no model; metrics score masks, whoever made them; weight loading needs no
Lightning. Every import counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PARTS = {
    "modeling": ["mpgsam2/modeling", "mpgsam2/text"],
    "data": ["mpgsam2/data"],
    "metrics": ["mpgsam2/metrics", "mpgsam2/losses.py"],
    "weights": ["mpgsam2/weights"],
    "inference": ["mpgsam2/inference"],
    "evaluation": ["mpgsam2/evaluation", "mpgsam2/distributed.py"],
}
# part -> import prefixes it must never use, and why
NEVER = {
    "modeling": (
        [
            "lightning",
            "pytorch_lightning",
            "hydra",
            "omegaconf",
            "mpgsam2.data",
            "mpgsam2.metrics",
            "mpgsam2.lit_module",
            "mpgsam2.inference",
            "data_modules",
            "callbacks",
            "train",
            "eval",
        ],
        "model code is plain PyTorch: tensors in, tensors out",
    ),
    "data": (["mpgsam2.modeling", "mpgsam2.weights", "lightning", "hydra"], "readers know no model"),
    "metrics": (
        ["mpgsam2.modeling", "mpgsam2.weights", "lightning"],
        "metrics score masks, whoever made them",
    ),
    "weights": (
        ["lightning", "hydra", "mpgsam2.lit_module", "data_modules", "callbacks"],
        "loading needs no Lightning",
    ),
    "inference": (["lightning", "hydra", "data_modules", "callbacks", "mpgsam2.lit_module"], "plain PyTorch"),
    "evaluation": (
        [
            "lightning",
            "hydra",
            "omegaconf",
            "data_modules",
            "callbacks",
            "mpgsam2.lit_module",
            "train",
            "eval",
        ],
        "evaluation reads a data module through its protocol (eval_targets), never the Lightning layer",
    ),
}


def _files(part: str) -> list[Path]:
    out = []
    for entry in PARTS[part]:
        path = REPO / entry
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def imported_modules(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative imports resolved against its package under ``root``."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            found.append((node.lineno, base))
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("part", sorted(NEVER))
def test_a_part_never_imports_what_it_must_not(part: str) -> None:
    forbidden, why = NEVER[part]
    files = _files(part)
    assert files, f"no files for {part}"
    bad = [
        f"{f.relative_to(REPO)}:{line} imports {module}"
        for f in files
        for line, module in imported_modules(f)
        if any(_matches(module, prefix) for prefix in forbidden)
    ]
    assert not bad, f"{part} ({why}):\n" + "\n".join(bad)


def test_the_reader_of_imports_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = tmp_path / "mpgsam2" / "modeling" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    import lightning\n    from ..data import sources\n")
    modules = [m for _, m in imported_modules(probe, tmp_path)]
    assert "lightning" in modules and "mpgsam2.data.sources" in modules


def test_the_process_group_is_asked_for_rank_and_world_in_one_place() -> None:
    """``rank_and_world`` (mpgsam2/distributed.py) is the one reader of ``torch.distributed``'s rank and size."""
    callers = []
    for path in sorted(
        [
            *REPO.glob("*.py"),
            *(REPO / "mpgsam2").rglob("*.py"),
            *(REPO / "data_modules").rglob("*.py"),
            *(REPO / "callbacks").rglob("*.py"),
        ]
    ):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("get_rank", "get_world_size"):
                callers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert callers and all(c.startswith("mpgsam2/distributed.py:") for c in callers), callers
