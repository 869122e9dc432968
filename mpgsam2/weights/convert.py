"""Key converters: checkpoint names of each weight source -> our parameter names.

Each converter is a pure function over a state dict, driven by an ordered rule table of
``(compiled regex, replacement)``. A key must match a rule as a whole (``fullmatch``); the first matching rule wins.
A key that no rule matches is an error, unless an explicit ignore table (pattern, reason) lists it; ignored keys are
dropped from the result but recorded, with their reason, on the returned :class:`ConvertedStateDict` so that the
loader reports them as expected-unexpected. Two source keys that map to the same name are an error.

Sources:
    * MPG-SAM 2 (``EvfSamModel`` state dicts: HF folders, ``merge_lora_weights_and_save_hf_model.py`` output, the
      parity fixture; DeepSpeed ``zero_to_fp32`` exports prefix every key with ``module.evf_model.``):
      :func:`convert_mpgsam2`; single keys both ways: :func:`our_name`, :func:`original_name`.
    * Official SAM 2 / SAM 2.1 (``sam2_hiera_*.pt``, ``sam2.1_hiera_*.pt``): :func:`convert_sam2` -> ``sam.*``.
    * Official BEiT-3 pre-training checkpoints (``beit3_{base,large}_patch16_224.pth``): :func:`convert_beit3`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from mpgsam2.weights.io import CheckpointError, name_listing

__all__ = [
    "Rule",
    "IgnoreRule",
    "ConvertedStateDict",
    "MPGSAM2_RULES",
    "MPGSAM2_REVERSE_RULES",
    "MPGSAM2_WRAPPER_PREFIXES",
    "MPG_DECODER_MODULES",
    "SAM2_RULES",
    "BEIT3_RULES",
    "BEIT3_IGNORE",
    "HF_GAMMA_KEY",
    "apply_rules",
    "convert_mpgsam2",
    "convert_mpgsam2_to_original",
    "convert_sam2",
    "convert_beit3",
    "our_name",
    "original_name",
    "strip_prefix",
    "detect_format",
]

Rule = tuple[re.Pattern[str], str]
"""(pattern matched against the whole key, replacement in ``re.Match.expand`` syntax)."""
IgnoreRule = tuple[re.Pattern[str], str]
"""(pattern matched against the whole key, reason the key is dropped)."""

_MAX_LISTED = 20


def _rules(*pairs: tuple[str, str]) -> list[Rule]:
    return [(re.compile(pattern), repl) for pattern, repl in pairs]


# ------------------------------------------------------------------------------------------------------ MPG-SAM 2

# Original EvfSamModel prefix -> our prefix: the one table both directions are built from. Specific entries
# (the four MPG decoder modules) come before the generic visual_model / sam entry.
MPGSAM2_PREFIXES: tuple[tuple[str, str], ...] = (
    ("mm_extractor.beit3.", "beit3."),
    ("visual_ifi.", "mask_prior.global_attn."),
    # The model wraps this nn.MultiheadAttention as `token_refine.attn` (multiplicative cross-attention).
    ("vmtoken.multihead_attn.", "mask_prior.token_refine.attn."),
    ("mask_linear.", "mask_prior.token_proj."),
    ("mask_product.", "mask_prior.prior_head."),
    ("meo_linear.", "mask_prior.context_proj."),
    ("text_hidden_fcs.0.", "sparse_prompt_mlp."),
    ("text_feat_linear.", "text_proj."),
    ("text2one_linear.", "sentence_head."),
    ("visual_model.sam_mask_decoder.vtlfusion_module.", "sam.sam_mask_decoder.pixel_global_fusion."),
    ("visual_model.sam_mask_decoder.mmfusion_module.", "sam.sam_mask_decoder.object_global_fusion."),
    ("visual_model.sam_mask_decoder.objfusion_module.", "sam.sam_mask_decoder.object_historical_fusion."),
    ("visual_model.sam_mask_decoder.patch_linear.", "sam.sam_mask_decoder.context_patch_proj."),
    ("visual_model.", "sam."),
)


def _prefix_rules(pairs: tuple[tuple[str, str], ...], reverse: bool) -> list[Rule]:
    return _rules(
        *((re.escape(b if reverse else a) + "(.+)", (a if reverse else b) + r"\1") for a, b in pairs)
    )


# Original name -> ours. EVF-SAM renamed the memory-encoder layer scale `gamma` to `weight` (HF from_pretrained
# drops keys containing "gamma"); the tensor is the same, so that alias maps back to `gamma` explicitly.
MPGSAM2_RULES: list[Rule] = [
    *_rules(
        (
            r"visual_model\.memory_encoder\.fuser\.layers\.(\d+)\.weight",
            r"sam.memory_encoder.fuser.layers.\1.gamma",
        )
    ),
    *_prefix_rules(MPGSAM2_PREFIXES, reverse=False),
]

# Our name -> original name (the inverse of MPGSAM2_RULES; `gamma` keeps its canonical name).
MPGSAM2_REVERSE_RULES: list[Rule] = _prefix_rules(MPGSAM2_PREFIXES, reverse=True)

# Prefixes that wrap every key of an EvfSamModel state dict: DeepSpeed (DDP inside) around ReferFormer, and
# ReferFormer alone (main.py's model_without_ddp).
MPGSAM2_WRAPPER_PREFIXES: tuple[str, ...] = ("module.evf_model.", "evf_model.")

# The MPG-SAM 2 modules inside the SAM 2 mask decoder (our names). Official SAM 2 checkpoints lack them.
MPG_DECODER_MODULES: tuple[str, ...] = (
    "sam.sam_mask_decoder.pixel_global_fusion",
    "sam.sam_mask_decoder.object_global_fusion",
    "sam.sam_mask_decoder.object_historical_fusion",
    "sam.sam_mask_decoder.context_patch_proj",
)

# Our name of the SAM 2 memory-encoder layer scales that the original's HF from_pretrained silently dropped.
HF_GAMMA_KEY = re.compile(r"sam\.memory_encoder\.fuser\.layers\.\d+\.gamma")

# ---------------------------------------------------------------------------------------------------------- SAM 2

# Official SAM 2 / SAM 2.1 checkpoint name -> our name: every top-level component is listed, so a foreign key
# (e.g. an MPG-SAM 2 'visual_model.*' state dict passed by mistake) is an error, not a silent 'sam.visual_model.*'.
SAM2_RULES: list[Rule] = _rules(
    # Same EVF-SAM `weight` alias of the memory-encoder layer scale as in MPGSAM2_RULES.
    (r"memory_encoder\.fuser\.layers\.(\d+)\.weight", r"sam.memory_encoder.fuser.layers.\1.gamma"),
    (r"image_encoder\.(.+)", r"sam.image_encoder.\1"),
    (r"memory_attention\.(.+)", r"sam.memory_attention.\1"),
    (r"memory_encoder\.(.+)", r"sam.memory_encoder.\1"),
    (r"sam_prompt_encoder\.(.+)", r"sam.sam_prompt_encoder.\1"),
    (r"sam_mask_decoder\.(.+)", r"sam.sam_mask_decoder.\1"),
    (r"obj_ptr_proj\.(.+)", r"sam.obj_ptr_proj.\1"),
    (r"mask_downsample\.(.+)", r"sam.mask_downsample.\1"),
    (r"(maskmem_tpos_enc|no_mem_embed|no_mem_pos_enc|no_obj_ptr)", r"sam.\1"),
    # SAM 2.1 only: signed temporal pointer encoding and the spatial no-object embedding.
    (r"obj_ptr_tpos_proj\.(.+)", r"sam.obj_ptr_tpos_proj.\1"),
    (r"no_obj_embed_spatial", r"sam.no_obj_embed_spatial"),
)

# --------------------------------------------------------------------------------------------------------- BEiT-3

BEIT3_RULES: list[Rule] = _rules((r"beit3\.(.+)", r"beit3.\1"))

# Pre-training heads stored in beit3_{base,large}_patch16_224.pth beside the encoder. The original loads these
# files with strict=False into a BEiT3Wrapper built with no_output_layer=True, so they are dropped there too.
BEIT3_IGNORE: list[IgnoreRule] = [
    (
        re.compile(r"mim_head\.(weight|bias)"),
        "BEiT-3 masked-image-modelling head of pre-training (Linear(d, 8192) over the BEiT v2 visual tokens); the "
        "unilm maintainers state it is stored in beit3_{base,large}_patch16_224.pth (microsoft/unilm#1078); "
        "not used by the encoder",
    ),
    (
        re.compile(r"beit3\.encoder\.output_projection\.weight"),
        "BEiT-3 masked-language-modelling head of pre-training: torchscale Encoder.output_projection "
        "(Linear(d, 64010, bias=False)), absent when the encoder is built with no_output_layer=True as here. "
        "Name from torchscale; presence inferred from the published sizes (276M base / 746M large = encoder "
        "220.99M / 672.70M + d*64010 + mim_head d*8192+8192)",
    ),
]


# ----------------------------------------------------------------------------------------------------- machinery


class ConvertedStateDict(dict[str, Tensor]):
    """A converted state dict: a plain ``dict`` (name -> tensor) that also records what the conversion did.

    Attributes:
        source_format: the converter that produced it ("mpgsam2", "sam2", "beit3").
        ignored: source keys dropped by an ignore table, with the reason (the loader reports them as
            expected-unexpected).
        notes: human-readable remarks (prefix stripped, aliases used, tensors replaced); copied into the LoadReport.
    """

    def __init__(
        self,
        data: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] = (),
        *,
        source_format: str = "",
        ignored: Mapping[str, str] | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        super().__init__(data)
        self.source_format = source_format
        self.ignored: dict[str, str] = dict(ignored or {})
        self.notes: list[str] = list(notes)


def _listing(items: list[str]) -> str:
    return name_listing(items, _MAX_LISTED)


def _map_key(key: str, rules: list[Rule]) -> str | None:
    for pattern, repl in rules:
        m = pattern.fullmatch(key)
        if m is not None:
            return m.expand(repl)
    return None


def apply_rules(
    state_dict: Mapping[str, Tensor],
    rules: list[Rule],
    *,
    ignore: Iterable[IgnoreRule] = (),
    source: str = "<state dict>",
    what: str = "checkpoint",
    hint: str = "",
) -> ConvertedStateDict:
    """Rename every key of ``state_dict`` with an ordered rule table.

    Args:
        state_dict: name -> tensor (tensors are passed through, not copied).
        rules: ordered (pattern, replacement); each key must fullmatch one; the first match wins.
        ignore: (pattern, reason) of keys to drop; checked before ``rules``.
        source: file name (or description) used in error messages.
        what: name of the checkpoint kind, used in error messages.
        hint: extra sentence appended to the "unmatched keys" error.

    Returns:
        The renamed state dict, in the input order, with ``ignored`` filled in.

    Raises:
        CheckpointError: keys that no rule or ignore entry matches, or two keys mapped to the same name.
    """
    ignore = list(ignore)
    out = ConvertedStateDict()
    origin: dict[str, str] = {}
    unmatched: list[str] = []
    collisions: list[str] = []
    for key, value in state_dict.items():
        reason = next((r for pattern, r in ignore if pattern.fullmatch(key)), None)
        if reason is not None:
            out.ignored[key] = reason
            continue
        new = _map_key(key, rules)
        if new is None:
            unmatched.append(key)
        elif new in origin:
            collisions.append(f"{origin[new]!r} and {key!r} -> {new!r}")
        else:
            origin[new] = key
            out[new] = value
    if unmatched:
        raise CheckpointError(
            f"{source}: {len(unmatched)} key(s) of this {what} match no conversion rule (nothing is dropped "
            f"silently):\n{_listing(unmatched)}" + (f"\n{hint}" if hint else "")
        )
    if collisions:
        raise CheckpointError(
            f"{source}: {len(collisions)} pair(s) of {what} keys map to the same name:\n{_listing(collisions)}"
        )
    return out


def _strip_wrapper(
    state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...], source: str
) -> tuple[Mapping[str, Tensor], str]:
    """Remove a prefix that wraps every key; a prefix on only some keys is an error."""
    for prefix in prefixes:
        has = [k.startswith(prefix) for k in state_dict]
        if all(has) and has:
            return {k[len(prefix) :]: v for k, v in state_dict.items()}, prefix
        if any(has):
            lacking = [k for k, h in zip(state_dict, has) if not h]
            raise CheckpointError(
                f"{source}: {sum(has)} key(s) carry the prefix {prefix!r} but {len(lacking)} do not; a checkpoint "
                f"must be wrapped consistently:\n{_listing(lacking)}"
            )
    return state_dict, ""


# ---------------------------------------------------------------------------------------------------- converters


def convert_mpgsam2(
    state_dict: Mapping[str, Tensor],
    *,
    hf_gamma_compat: bool = False,
    gamma_value: float = 1e-6,
    source: str = "<state dict>",
) -> ConvertedStateDict:
    """Convert an original MPG-SAM 2 (``EvfSamModel``) state dict to our names.

    Args:
        state_dict: original names, plain or wrapped in ``module.evf_model.`` (DeepSpeed) / ``evf_model.``.
        hf_gamma_compat: reproduce the original's HF ``from_pretrained``, which silently dropped
            ``visual_model.memory_encoder.fuser.layers.N.gamma`` so that the model kept its constructor value:
            those tensors are replaced by ``full(gamma_value)`` of the same shape (and a note says so).
        gamma_value: the memory-encoder CXBlock ``layer_scale_init_value`` of the SAM 2 config (1e-6 in every
            released SAM 2 config), used only with ``hf_gamma_compat``.
        source: file name used in error messages.

    Returns:
        Our names -> the same tensors (replaced ones only under ``hf_gamma_compat``).
    """
    sd, prefix = _strip_wrapper(state_dict, MPGSAM2_WRAPPER_PREFIXES, source)
    notes = [f"stripped the wrapper prefix {prefix!r} from every key"] if prefix else []
    aliased = [k for k in sd if re.fullmatch(r"visual_model\.memory_encoder\.fuser\.layers\.\d+\.weight", k)]
    if aliased:
        notes.append(f"mapped EVF-SAM layer-scale names to 'gamma': {', '.join(aliased)}")
    out = apply_rules(
        sd,
        MPGSAM2_RULES,
        source=source,
        what="MPG-SAM 2 checkpoint",
        hint=_format_hint(sd, expected="mpgsam2"),
    )
    out.source_format = "mpgsam2"
    out.notes[:0] = notes
    if hf_gamma_compat:
        replaced = [k for k in out if HF_GAMMA_KEY.fullmatch(k)]
        for k in replaced:
            out[k] = torch.full_like(out[k], gamma_value)
        out.notes.append(
            f"hf_gamma_compat: {len(replaced)} memory-encoder layer scale(s) set to {gamma_value:g} instead of the "
            f"checkpoint values, reproducing the original's HF from_pretrained, which dropped them: "
            f"{', '.join(replaced) or 'none present'}"
        )
    return out


def convert_mpgsam2_to_original(
    state_dict: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> ConvertedStateDict:
    """Inverse of :func:`convert_mpgsam2`: our names -> original ``EvfSamModel`` names (same tensors)."""
    out = apply_rules(state_dict, MPGSAM2_REVERSE_RULES, source=source, what="mpgsam2 (our names) state dict")
    out.source_format = "native"
    return out


def convert_sam2(state_dict: Mapping[str, Tensor], *, source: str = "<state dict>") -> ConvertedStateDict:
    """Convert an official SAM 2 / SAM 2.1 checkpoint (``<rest>``) to our names (``sam.<rest>``).

    The result lacks the MPG-SAM 2 decoder modules (:data:`MPG_DECODER_MODULES`); declare them expected-missing
    when loading into a full model. SAM 2.1 keys (``obj_ptr_tpos_proj.*``, ``no_obj_embed_spatial``) are mapped
    too; they load only into a model built with the SAM 2.1 options.
    """
    aliased = [k for k in state_dict if re.fullmatch(r"memory_encoder\.fuser\.layers\.\d+\.weight", k)]
    out = apply_rules(
        state_dict, SAM2_RULES, source=source, what="SAM 2 checkpoint", hint=_format_hint(state_dict, "sam2")
    )
    out.source_format = "sam2"
    if aliased:
        out.notes.append(f"mapped EVF-SAM layer-scale names to 'gamma': {', '.join(aliased)}")
    return out


def convert_beit3(state_dict: Mapping[str, Tensor], *, source: str = "<state dict>") -> ConvertedStateDict:
    """Convert an official BEiT-3 checkpoint (``beit3.<rest>``) to our names (``beit3.<rest>``).

    Pre-training heads listed in :data:`BEIT3_IGNORE` are dropped and recorded in ``ignored`` with their reason.
    """
    out = apply_rules(
        state_dict,
        BEIT3_RULES,
        ignore=BEIT3_IGNORE,
        source=source,
        what="BEiT-3 checkpoint",
        hint=_format_hint(state_dict, "beit3"),
    )
    out.source_format = "beit3"
    return out


# --------------------------------------------------------------------------------------------------- single keys


def our_name(original_key: str) -> str:
    """Our parameter name of one original MPG-SAM 2 key (a ``module.evf_model.``/``evf_model.`` prefix is allowed)."""
    key = original_key
    for prefix in MPGSAM2_WRAPPER_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    new = _map_key(key, MPGSAM2_RULES)
    if new is None:
        raise CheckpointError(f"{original_key!r} is not an MPG-SAM 2 (EvfSamModel) parameter name")
    return new


def original_name(our_key: str) -> str:
    """The original MPG-SAM 2 (``EvfSamModel``) name of one of our parameter names."""
    old = _map_key(our_key, MPGSAM2_REVERSE_RULES)
    if old is None:
        raise CheckpointError(f"{our_key!r} is not one of our MPG-SAM 2 parameter names")
    return old


# ------------------------------------------------------------------------------------------------------- helpers


def strip_prefix(
    state_dict: Mapping[str, Tensor], prefix: str, *, source: str = "<state dict>"
) -> ConvertedStateDict:
    """Drop ``prefix`` from every key, e.g. ``"sam."`` to load into the SAM 2 sub-module alone.

    Every key must carry the prefix (keys outside it would otherwise be lost silently). Metadata of a
    :class:`ConvertedStateDict` is kept.
    """
    outside = [k for k in state_dict if not k.startswith(prefix)]
    if outside:
        raise CheckpointError(
            f"{source}: {len(outside)} key(s) lack the prefix {prefix!r}, so the state dict does not belong to that "
            f"sub-module alone:\n{_listing(outside)}"
        )
    out = ConvertedStateDict(
        ((k[len(prefix) :], v) for k, v in state_dict.items()),
        source_format=getattr(state_dict, "source_format", ""),
        ignored=getattr(state_dict, "ignored", None),
        notes=getattr(state_dict, "notes", ()),
    )
    out.notes.append(f"stripped {prefix!r} to load into a sub-module")
    return out


_NATIVE_TOP = ("sam.", "mask_prior.", "sparse_prompt_mlp.", "text_proj.", "sentence_head.")


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """Guess the source of a state dict from its keys.

    Returns:
        "mpgsam2" (original EvfSamModel names, possibly wrapped), "sam2" (official SAM 2), "beit3" (official
        BEiT-3), "native" (our names) or "unknown".
    """
    keys = list(state_dict)
    bare = [next((k[len(p) :] for p in MPGSAM2_WRAPPER_PREFIXES if k.startswith(p)), k) for k in keys]
    if any(k.startswith(("visual_model.", "mm_extractor.")) for k in bare):
        return "mpgsam2"
    if any(k.startswith(_NATIVE_TOP) for k in keys):
        return "native"
    if any(k.startswith(("image_encoder.", "sam_mask_decoder.", "memory_attention.")) for k in keys):
        return "sam2"
    if keys and all(k.startswith("beit3.") or any(p.fullmatch(k) for p, _ in BEIT3_IGNORE) for k in keys):
        return "beit3"
    return "unknown"


def _format_hint(state_dict: Mapping[str, Tensor], expected: str) -> str:
    found = detect_format(state_dict)
    if found in (expected, "unknown"):
        return ""
    fn = {
        "mpgsam2": "convert_mpgsam2",
        "sam2": "convert_sam2",
        "beit3": "convert_beit3",
        "native": "no converter (the keys are already ours)",
    }[found]
    return f"The keys look like a {found!r} state dict; use {fn}."
