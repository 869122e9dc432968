"""Weight loading: checkpoint readers, rule-table key converters and a strict loader with a report.

Two verbs: a model *from* a path is ``mpgsam2.load_model`` (a ``train.py`` checkpoint, our export or a released
folder); weights *into* a model built already are :func:`load_weights`::

    import mpgsam2
    from mpgsam2.weights import load_weights

    model = mpgsam2.load_model("MPG-SAM2-large-ytvos/").model               # HF folder of a released checkpoint
    report = load_weights(model, "sam2_hiera_large.pt", fmt="sam2")          # then "beit3_large_patch16_224.pth"

Deprecated aliases, kept for one release: ``load_checkpoint`` (= ``load_weights``), ``load_mpgsam2`` (the model of
``load_model``), ``init_from_components`` (``load_weights`` with ``fmt="beit3"`` / ``"sam2"``) and
``mpgsam2.predict.load_model_for_inference`` (``load_model``'s model and tokenizer). ``load_into`` (a state dict
already in our names into a model) and ``read_train_checkpoint`` are the primitives under them.
"""

from mpgsam2.weights.checkpoints import LoadedModel, load_model, weights_digest
from mpgsam2.weights.convert import (
    BEIT3_IGNORE,
    BEIT3_RULES,
    MPG_DECODER_MODULES,
    MPGSAM2_REVERSE_RULES,
    MPGSAM2_RULES,
    SAM2_RULES,
    ConvertedStateDict,
    apply_rules,
    convert_beit3,
    convert_mpgsam2,
    convert_mpgsam2_to_original,
    convert_sam2,
    detect_format,
    original_name,
    our_name,
    strip_prefix,
)
from mpgsam2.weights.io import CheckpointError, read_state_dict
from mpgsam2.weights.loader import (
    BEIT3_CHECKPOINT_GAPS,
    SAM2_CHECKPOINT_GAPS,
    LoadReport,
    check_keys,
    load_checkpoint,
    load_into,
    load_weights,
)
from mpgsam2.weights.pretrained import init_from_components, load_mpgsam2, save_mpgsam2

__all__ = [
    "LoadedModel",
    "load_model",
    "weights_digest",
    "init_from_components",
    "load_mpgsam2",
    "save_mpgsam2",
    "BEIT3_CHECKPOINT_GAPS",
    "BEIT3_IGNORE",
    "BEIT3_RULES",
    "MPG_DECODER_MODULES",
    "MPGSAM2_REVERSE_RULES",
    "MPGSAM2_RULES",
    "SAM2_CHECKPOINT_GAPS",
    "SAM2_RULES",
    "CheckpointError",
    "ConvertedStateDict",
    "LoadReport",
    "apply_rules",
    "check_keys",
    "convert_beit3",
    "convert_mpgsam2",
    "convert_mpgsam2_to_original",
    "convert_sam2",
    "detect_format",
    "load_checkpoint",
    "load_into",
    "load_weights",
    "original_name",
    "our_name",
    "read_state_dict",
    "strip_prefix",
]
