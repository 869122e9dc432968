r"""Strict loading of converted state dicts into any ``nn.Module``, with a :class:`LoadReport`.

Every gap between checkpoint and module (a missing key, an unexpected key, a shape mismatch) is an error that names
the source file and lists the keys, unless the caller declared the gap expected with a pattern and a reason.
Shape mismatches can never be declared away. Nothing goes through ``load_state_dict(strict=False)``.

Patterns in ``allow_missing`` / ``allow_unexpected`` are globs matched against the whole key (``fnmatch``, e.g.
``"beit3.*"``) or regular expressions applied with ``re.search`` (anchor them: ``r"^(?!sam\.)"``). A string is a
regex when it starts with ``"re:"`` (removed) or ``"^"``, ends with ``"$"`` or contains one of ``\ ( ) | + {``;
compiled ``re.Pattern`` objects are accepted too. Each item is a pattern or a ``(pattern, reason)`` pair, or the
whole argument is a ``{pattern: reason}`` mapping.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mpgsam2.weights.convert import (
    MPG_DECODER_MODULES,
    convert_beit3,
    convert_mpgsam2,
    convert_sam2,
    detect_format,
    strip_prefix,
)
from mpgsam2.weights.io import CheckpointError, name_listing, read_state_dict

log = logging.getLogger(__name__)

__all__ = [
    "AllowSpec",
    "LoadReport",
    "load_into",
    "check_keys",
    "load_checkpoint",
    "load_weights",
    "SAM2_CHECKPOINT_GAPS",
    "BEIT3_CHECKPOINT_GAPS",
]

AllowSpec = str | re.Pattern[str] | tuple[str | re.Pattern[str], str]
AllowArg = Iterable[AllowSpec] | Mapping[str, str]
Shape = tuple[int, ...]

_MAX_LISTED = 25
_NO_REASON = "declared expected by the caller (no reason given)"

# ------------------------------------------------------------------------------------------- declared gaps

_MPG_HEADS: tuple[tuple[str, str], ...] = (
    (
        "mask_prior.*",
        "MPG-SAM 2 mask-prior head: not part of this checkpoint, trained from its initialisation",
    ),
    ("sparse_prompt_mlp.*", "MPG-SAM 2 sparse-prompt MLP: not part of this checkpoint"),
    ("text_proj.*", "MPG-SAM 2 word-feature projection: not part of this checkpoint"),
    ("sentence_head.*", "MPG-SAM 2 sentence head: not part of this checkpoint"),
)

# Loading an official SAM 2 checkpoint into a full MPG-SAM 2 model (or, with a leading "*", into its SAM part).
SAM2_CHECKPOINT_GAPS: tuple[tuple[str, str], ...] = (
    *(
        (
            f"*{m.removeprefix('sam.')}.*",
            "MPG-SAM 2 module in the SAM 2 mask decoder: official SAM 2 checkpoints lack it, so it keeps its "
            "initialisation (the original's strict=False load leaves it random too)",
        )
        for m in MPG_DECODER_MODULES
    ),
    ("beit3.*", "BEiT-3 weights come from a BEiT-3 or MPG-SAM 2 checkpoint, not from SAM 2"),
    *_MPG_HEADS,
)

# Loading an official BEiT-3 checkpoint into a full MPG-SAM 2 model.
BEIT3_CHECKPOINT_GAPS: tuple[tuple[str, str], ...] = (
    ("sam.*", "SAM 2 weights come from a SAM 2 or MPG-SAM 2 checkpoint, not from BEiT-3"),
    *_MPG_HEADS,
)


# ----------------------------------------------------------------------------------------------------- report


@dataclass
class LoadReport:
    """What a load (or a key check) found.

    Attributes:
        missing: module keys the checkpoint lacks (undeclared; non-empty only in a non-raising check).
        unexpected: checkpoint keys the module lacks (undeclared).
        wrong_shape: key -> (checkpoint shape, module shape).
        expected_missing: declared missing keys -> reason.
        expected_unexpected: declared unexpected keys (and keys a converter's ignore table dropped) -> reason.
        notes: remarks from the conversion and the load (prefix stripped, dtype casts, compat replacements).
        source: the file (or description) the state dict came from.
        loaded: keys whose values were copied into the module.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: dict[str, tuple[Shape, Shape]] = field(default_factory=dict)
    expected_missing: dict[str, str] = field(default_factory=dict)
    expected_unexpected: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    loaded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every gap was declared expected and no shape differs."""
        return not (self.missing or self.unexpected or self.wrong_shape)

    def summary(self) -> str:
        """One line: counts of loaded, declared and undeclared keys."""
        return (
            f"{self.source}: {len(self.loaded)} loaded, {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected, {len(self.wrong_shape)} wrong shape, {len(self.expected_missing)} expected missing, "
            f"{len(self.expected_unexpected)} expected unexpected"
        )

    def __str__(self) -> str:
        # logs get the one-line summary; the full lists stay on the object (and in errors)
        return self.summary()

    def error_message(self, target: str) -> str:
        """Multi-line description of the undeclared gaps, as raised in :class:`CheckpointError`."""
        parts = [
            f"{self.source}: checkpoint does not fit {target}: {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.wrong_shape)} wrong-shape key(s)"
        ]
        if self.missing:
            parts.append(
                f"missing from the checkpoint ({_by_module(self.missing)}):\n{_listing(self.missing)}"
            )
        if self.unexpected:
            parts.append(f"not in the model ({_by_module(self.unexpected)}):\n{_listing(self.unexpected)}")
        if self.wrong_shape:
            rows = [f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, (c, m) in self.wrong_shape.items()]
            parts.append(f"wrong shape ({_by_module(list(self.wrong_shape))}):\n{_listing(rows)}")
        parts.append(
            "Declare intended gaps with allow_missing / allow_unexpected (pattern, reason); shapes must match."
        )
        return "\n".join(parts)


def _listing(items: Sequence[str]) -> str:
    return name_listing(items, _MAX_LISTED)


def _by_module(keys: Sequence[str], depth: int = 2) -> str:
    counts = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return (
        "by module: "
        + ", ".join(f"{m} {n}" for m, n in counts.most_common(8))
        + (", ..." if len(counts) > 8 else "")
    )


# --------------------------------------------------------------------------------------------------- matching


def _is_regex(pattern: str) -> bool:
    # Globs use only * ? [...]; anything anchored or with regex-only syntax is a regular expression.
    return pattern.startswith("^") or pattern.endswith("$") or any(c in pattern for c in "\\()|+{")


def _compile_allow(specs: AllowArg) -> list[tuple[Callable[[str], bool], str]]:
    items: Iterable[AllowSpec] = specs.items() if isinstance(specs, Mapping) else specs
    out: list[tuple[Callable[[str], bool], str]] = []
    for item in items:
        pattern, reason = item if isinstance(item, tuple) else (item, _NO_REASON)
        if isinstance(pattern, str) and (pattern.startswith("re:") or _is_regex(pattern)):
            pattern = re.compile(pattern.removeprefix("re:"))
        if isinstance(pattern, re.Pattern):
            out.append((lambda k, p=pattern: p.search(k) is not None, reason))
        else:
            out.append((lambda k, p=pattern: fnmatch.fnmatchcase(k, p), reason))
    return out


def _declared(key: str, matchers: list[tuple[Callable[[str], bool], str]]) -> str | None:
    return next((reason for match, reason in matchers if match(key)), None)


def _shape_of(value: Tensor | Sequence[int] | torch.Size) -> Shape:
    return tuple(int(d) for d in (value.shape if isinstance(value, Tensor) else value))


def _compare(
    expected: Mapping[str, Shape],
    provided: Mapping[str, Shape],
    *,
    source: str,
    allow_missing: AllowArg,
    allow_unexpected: AllowArg,
) -> LoadReport:
    report = LoadReport(source=source)
    miss_rules, extra_rules = _compile_allow(allow_missing), _compile_allow(allow_unexpected)
    for key, shape in expected.items():
        if key not in provided:
            reason = _declared(key, miss_rules)
            if reason is None:
                report.missing.append(key)
            else:
                report.expected_missing[key] = reason
        elif provided[key] != shape:
            report.wrong_shape[key] = (provided[key], shape)
    for key in provided:
        if key not in expected:
            reason = _declared(key, extra_rules)
            if reason is None:
                report.unexpected.append(key)
            else:
                report.expected_unexpected[key] = reason
    return report


def _absorb_conversion(report: LoadReport, state_dict: Mapping[str, object]) -> None:
    """Copy the converter's dropped keys and notes (ConvertedStateDict attributes) into the report."""
    for key, reason in getattr(state_dict, "ignored", {}).items():
        report.expected_unexpected.setdefault(key, f"dropped by the converter: {reason}")
    report.notes.extend(getattr(state_dict, "notes", ()))


# ----------------------------------------------------------------------------------------------------- public


def check_keys(
    module: nn.Module,
    state_dict_keys_and_shapes: Mapping[str, Tensor | Sequence[int] | torch.Size],
    *,
    source: str = "<key list>",
    allow_missing: AllowArg = (),
    allow_unexpected: AllowArg = (),
    raise_on_error: bool = True,
) -> LoadReport:
    """Compare names and shapes of a module with those of a checkpoint, without touching any data.

    Works with modules on the meta device and with shape lists (e.g. read from a JSON key manifest).

    Args:
        module: the target module; its ``state_dict()`` keys (parameters and persistent buffers) are expected.
        state_dict_keys_and_shapes: checkpoint key -> tensor or shape.
        source: file name for the report and errors.
        allow_missing: declared missing keys (see module docstring).
        allow_unexpected: declared unexpected keys.
        raise_on_error: raise :class:`CheckpointError` on undeclared gaps (else only report them).

    Returns:
        The report (``loaded`` stays empty).
    """
    expected = {k: _shape_of(v) for k, v in module.state_dict(keep_vars=True).items()}
    provided = {k: _shape_of(v) for k, v in state_dict_keys_and_shapes.items()}
    report = _compare(
        expected, provided, source=source, allow_missing=allow_missing, allow_unexpected=allow_unexpected
    )
    _absorb_conversion(report, state_dict_keys_and_shapes)
    if raise_on_error and not report.ok:
        raise CheckpointError(report.error_message(type(module).__name__))
    return report


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    allow_missing: AllowArg = (),
    allow_unexpected: AllowArg = (),
) -> LoadReport:
    """Copy a (converted) state dict into ``module`` after a strict key and shape check.

    Values are cast to the dtype of the module's tensor and copied in place (parameters keep their identity,
    ``requires_grad`` and device). On a module on the meta device only names and shapes are checked.

    Args:
        module: target module.
        state_dict: our names -> tensors (a :class:`~mpgsam2.weights.convert.ConvertedStateDict` also contributes
            its ignored keys and notes to the report).
        source: the checkpoint file, named in errors and in the report.
        allow_missing: module keys the checkpoint may lack, as patterns with reasons.
        allow_unexpected: checkpoint keys the module may lack, as patterns with reasons.

    Returns:
        The :class:`LoadReport`.

    Raises:
        CheckpointError: undeclared missing or unexpected keys, or any shape mismatch (nothing is copied then).
    """
    targets = module.state_dict(keep_vars=True)
    report = check_keys(
        module,
        state_dict,
        source=source,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
    )
    casts: Counter[str] = Counter()
    skipped_meta = 0
    with torch.no_grad():
        for key, dst in targets.items():
            if key not in state_dict:
                continue
            src = state_dict[key]
            if dst.is_meta:
                skipped_meta += 1
                continue
            if src.is_meta:
                raise CheckpointError(
                    f"{source}: {key!r} holds no data (meta tensor); cannot copy it into the model"
                )
            if src.dtype != dst.dtype:
                casts[f"{src.dtype}->{dst.dtype}"] += 1
            dst.copy_(src.to(dtype=dst.dtype))
            report.loaded.append(key)
    if casts:
        report.notes.append("cast to the module's dtype: " + ", ".join(f"{n} {c}" for c, n in casts.items()))
    if skipped_meta:
        report.notes.append(
            f"{skipped_meta} module tensor(s) on the meta device: names and shapes checked, no data"
        )
    log.info(report.summary())
    for note in report.notes:
        log.info("%s: %s", source, note)
    return report


def load_weights(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    hf_gamma_compat: bool = False,
    prefix: str = "",
    allow_missing: AllowArg = (),
    allow_unexpected: AllowArg = (),
) -> LoadReport:
    """Weights from a path into a model built already: read, convert and strictly load a ``train.py`` checkpoint,
    a checkpoint file or an HF folder. The one verb for it (a model *from* a path: :func:`mpgsam2.load_model`).

    Args:
        module: the full MPG-SAM 2 model, or a sub-module together with ``prefix``.
        path: a ``train.py`` checkpoint (``.ckpt``), a checkpoint file or an HF folder (see
            :func:`~mpgsam2.weights.io.read_state_dict`).
        fmt: "train" (a ``train.py`` checkpoint), "mpgsam2", "sam2", "beit3", "native" (already our names) or
            "auto" (a ``.ckpt`` file is a ``train.py`` checkpoint, anything else is guessed from the keys).
        hf_gamma_compat: released MPG-SAM 2 checkpoints only; see
            :func:`~mpgsam2.weights.convert.convert_mpgsam2`. Ignored for a ``train.py`` checkpoint (its layer
            scales are the trained ones), as ``build_model`` always did.
        prefix: load into a sub-module: strip this prefix (e.g. ``"sam."``) from every converted key.
        allow_missing: extra declared missing keys. For "sam2" and "beit3" the gaps of a full model
            (:data:`SAM2_CHECKPOINT_GAPS`, :data:`BEIT3_CHECKPOINT_GAPS`) are declared already.
        allow_unexpected: extra declared unexpected keys.

    Returns:
        The :class:`LoadReport`.
    """
    source = os.fspath(path)
    if fmt == "train" or (fmt == "auto" and source.endswith(".ckpt")):
        from mpgsam2.weights.checkpoints import read_train_checkpoint  # it imports this module

        raw, fmt, hf_gamma_compat = read_train_checkpoint(path).state_dict, "native", False
    else:
        raw = read_state_dict(path)
    if fmt == "auto":
        fmt = detect_format(raw)
        log.info("%s: detected checkpoint format %r", source, fmt)
    if hf_gamma_compat and fmt != "mpgsam2":
        raise ValueError(f"hf_gamma_compat applies to MPG-SAM 2 checkpoints only, not to {fmt!r} ({source})")
    defaults: tuple[tuple[str, str], ...] = ()
    if fmt == "mpgsam2":
        converted: Mapping[str, Tensor] = convert_mpgsam2(raw, hf_gamma_compat=hf_gamma_compat, source=source)
    elif fmt == "sam2":
        converted, defaults = convert_sam2(raw, source=source), SAM2_CHECKPOINT_GAPS
    elif fmt == "beit3":
        converted, defaults = convert_beit3(raw, source=source), BEIT3_CHECKPOINT_GAPS
    elif fmt == "native":
        converted = raw
    else:
        raise CheckpointError(
            f"{source}: cannot tell which model these {len(raw)} keys belong to (first: {next(iter(raw), None)!r});"
            f" pass fmt='train' | 'mpgsam2' | 'sam2' | 'beit3' | 'native'"
        )
    if prefix:
        converted = strip_prefix(converted, prefix, source=source)
    user_missing = list(allow_missing.items()) if isinstance(allow_missing, Mapping) else list(allow_missing)
    return load_into(
        module,
        converted,
        source=source,
        allow_missing=[*defaults, *user_missing],
        allow_unexpected=allow_unexpected,
    )


def load_checkpoint(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    fmt: str = "auto",
    hf_gamma_compat: bool = False,
    prefix: str = "",
    allow_missing: AllowArg = (),
    allow_unexpected: AllowArg = (),
) -> LoadReport:
    """Deprecated alias of :func:`load_weights` (the same arguments), kept for one release."""
    return load_weights(
        module,
        path,
        fmt=fmt,
        hf_gamma_compat=hf_gamma_compat,
        prefix=prefix,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
    )
