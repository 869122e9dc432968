"""Tests for the BEiT-3 sentencepiece tokenizer (XLM-R id layout, pad := unk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpgsam2.parity import DEFAULT_FIXTURE
from mpgsam2.text import Beit3Tokenizer

FIXTURE = DEFAULT_FIXTURE
SPM = FIXTURE / "tiny_sentencepiece.model"


@pytest.fixture(scope="module")
def spm_path() -> Path:
    if not SPM.is_file():
        pytest.fail(f"tiny sentencepiece model not found at {SPM}")
    return SPM


def test_tokenizer_matches_original_fixture(spm_path: Path) -> None:
    inputs = torch.load(FIXTURE / "inputs.pt", weights_only=True)
    facts = json.loads((FIXTURE / "config.json").read_text())["tokenizer"]
    caption = bytes(inputs["caption_utf8"].tolist()).decode("utf-8")
    tok = Beit3Tokenizer(spm_path)
    ids, mask = tok([caption])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert torch.equal(ids[0], inputs["input_ids"])
    assert torch.equal(mask[0], inputs["attention_mask"])
    assert tok.encode(caption) == inputs["input_ids"].tolist()
    assert len(tok) == tok.vocab_size == facts["vocab_len"]
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (facts["bos_id"], facts["eos_id"], facts["unk_id"])


@pytest.mark.parametrize("unk_as_pad", [True, False])
def test_tokenizer_unknown_piece_masked_only_when_unk_is_pad(spm_path: Path, unk_as_pad: bool) -> None:
    tok = Beit3Tokenizer(spm_path, unk_as_pad=unk_as_pad)
    # 'q', 'x', 'z' do not occur in the tiny model's training sentences.
    known = tok.encode("the ball")
    ids = tok.encode("the xqz ball")
    assert tok.unk_id == 3 and tok.unk_id in ids and tok.unk_id not in known
    batch, mask = tok(["the xqz ball"])
    unk_pos = batch[0] == tok.unk_id
    assert mask[0, unk_pos].tolist() == [not unk_as_pad] * int(unk_pos.sum())
    assert mask[0, ~unk_pos].all()
    assert tok.pad_id == (3 if unk_as_pad else 1)


@pytest.mark.parametrize("unk_as_pad", [True, False])
def test_tokenizer_batch_is_right_padded(spm_path: Path, unk_as_pad: bool) -> None:
    tok = Beit3Tokenizer(spm_path, unk_as_pad=unk_as_pad)
    texts = ["the red ball rolling to the left", "a boat", ""]
    ids, mask = tok(texts)
    lengths = [len(tok.encode(t)) for t in texts]
    assert ids.shape == (3, max(lengths)) and mask.shape == ids.shape
    for row, (text, n) in enumerate(zip(texts, lengths, strict=True)):
        assert ids[row, :n].tolist() == tok.encode(text)
        assert ids[row, 0] == tok.bos_id and ids[row, n - 1] == tok.eos_id
        assert (ids[row, n:] == tok.pad_id).all()
        assert mask[row, :n].all() and not mask[row, n:].any()
    assert tok("a boat")[0].tolist() == [tok.encode("a boat")]


def test_tokenizer_seg_and_mask_ids(spm_path: Path) -> None:
    import sentencepiece as spm

    n = spm.SentencePieceProcessor(model_file=str(spm_path)).get_piece_size()
    tok = Beit3Tokenizer(spm_path)
    assert tok.mask_id == n + 1
    assert tok.seg_token_id == n + 2 == tok.vocab_size - 1
    # Added tokens in the text are kept whole, as the HF tokenizer splits on them first.
    ids = tok.encode("the [SEG] ball")
    assert ids.count(tok.seg_token_id) == 1
    assert ids == [0, *tok.encode("the")[1:-1], tok.seg_token_id, *tok.encode("ball")[1:-1], 2]


def test_tokenizer_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "beit3.spm"
    with pytest.raises(FileNotFoundError, match="beit3.spm"):
        Beit3Tokenizer(missing)


def test_tokenizer_bad_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "not_a_model.spm"
    bad.write_bytes(b"definitely not a sentencepiece protobuf")
    with pytest.raises(ValueError, match="not_a_model.spm"):
        Beit3Tokenizer(bad)
