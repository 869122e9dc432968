"""Sentencepiece tokenizer with the BEiT-3 / XLM-R id layout used by MPG-SAM 2.

The original builds ``transformers.XLMRobertaTokenizer(beit3.spm)``, sets ``pad_token = unk_token`` and adds the
token ``[SEG]`` (``models/referformer.py: build``); inference reloads the same through ``AutoTokenizer``. This class
reproduces those ids without ``transformers``:

- ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3 (fairseq special tokens);
- sentencepiece piece ``i`` (i > 0) -> ``i + 1`` (fairseq offset); the model's own unknown piece (id 0) -> 3;
- ``<mask>`` = len(spm) + 1, then the added ``[SEG]`` = len(spm) + 2; ``vocab_size`` = len(spm) + 3.

Text is not lower-cased or otherwise normalised here beyond sentencepiece's own normaliser; that is the data
pipeline's job (spec §1.1).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Beit3Tokenizer"]

_BOS, _PAD, _EOS, _UNK = "<s>", "<pad>", "</s>", "<unk>"
_MASK, _SEG = "<mask>", "[SEG]"
_FAIRSEQ_SPECIAL = {_BOS: 0, _PAD: 1, _EOS: 2, _UNK: 3}
_FAIRSEQ_OFFSET = 1  # spm id i -> i + 1 (spm's <unk>=0, <s>=1, </s>=2 line up with fairseq's after the shift)


class Beit3Tokenizer:
    """Tokenizes referring expressions into BEiT-3 token ids.

    Args:
        spm_path: the sentencepiece model (the official ``beit3.spm``).
        unk_as_pad: parity with the original, which sets ``pad_token := unk_token``: the pad id becomes 3, so
            batches are padded with 3 and every unknown word piece is masked out of attention like padding.
            When False the pad id is 1 (``<pad>``) and unknown pieces stay visible.

    Raises:
        FileNotFoundError: ``spm_path`` does not exist.
        ValueError: ``spm_path`` is not a loadable sentencepiece model.
    """

    def __init__(self, spm_path: str | Path, unk_as_pad: bool = True) -> None:
        import sentencepiece as spm

        path = Path(spm_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"sentencepiece model not found: {path} (expected the BEiT-3 'beit3.spm' file)"
            )
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"{path} is not a valid sentencepiece model: {err}") from err
        self.spm_path = path
        self.unk_as_pad = unk_as_pad
        self._sp = processor
        n = processor.get_piece_size()
        self._mask_id = n + _FAIRSEQ_OFFSET
        self._seg_id = n + _FAIRSEQ_OFFSET + 1
        self._vocab_size = n + _FAIRSEQ_OFFSET + 2
        # parity: the HF slow tokenizer first splits the text on its added tokens (specials, <mask>, [SEG]) and
        # sentencepiece-encodes each remaining chunk separately. Longest alternative first = trie longest match.
        self._added = {**_FAIRSEQ_SPECIAL, _MASK: self._mask_id, _SEG: self._seg_id}
        alternatives = sorted(self._added, key=len, reverse=True)
        self._added_re = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    @property
    def bos_id(self) -> int:
        """Id of ``<s>`` (0)."""
        return _FAIRSEQ_SPECIAL[_BOS]

    @property
    def eos_id(self) -> int:
        """Id of ``</s>`` (2)."""
        return _FAIRSEQ_SPECIAL[_EOS]

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>`` (3)."""
        return _FAIRSEQ_SPECIAL[_UNK]

    @property
    def pad_id(self) -> int:
        """Padding id: 3 (= unk) with ``unk_as_pad``, else 1."""
        return self.unk_id if self.unk_as_pad else _FAIRSEQ_SPECIAL[_PAD]

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>`` (first id after the sentencepiece vocabulary)."""
        return self._mask_id

    @property
    def seg_token_id(self) -> int:
        """Id of the added ``[SEG]`` token (last id)."""
        return self._seg_id

    @property
    def vocab_size(self) -> int:
        """Number of ids including ``<mask>`` and ``[SEG]`` (``len(tokenizer)`` in HF terms)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def _piece_to_id(self, piece: str) -> int:
        if piece in _FAIRSEQ_SPECIAL:
            return _FAIRSEQ_SPECIAL[piece]
        spm_id = self._sp.PieceToId(piece)
        # spm id 0 is sentencepiece's own unknown piece.
        return spm_id + _FAIRSEQ_OFFSET if spm_id else self.unk_id

    def encode(self, text: str) -> list[int]:
        """Token ids of one string, wrapped as ``<s> ... </s>``."""
        chunks = self._added_re.split(text)  # [text, added, text, added, ..., text]
        for i in range(1, len(chunks), 2):
            # parity: <mask> is an lstrip token in XLM-R, so the whitespace before it is dropped.
            if chunks[i] == _MASK:
                chunks[i - 1] = chunks[i - 1].rstrip()
        ids: list[int] = []
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self._added:
                ids.append(self._added[chunk])
            else:
                ids.extend(self._piece_to_id(p) for p in self._sp.encode(chunk, out_type=str))
        return [self.bos_id, *ids, self.eos_id]

    def __call__(self, texts: list[str] | str) -> tuple[Tensor, Tensor]:
        """Tokenizes a batch, right-padded with ``pad_id`` to the longest sequence.

        Args:
            texts: B strings (a single string is treated as a batch of one).

        Returns:
            ids: (B, L) long token ids.
            attention_mask: (B, L) bool, ``ids != pad_id`` (with ``unk_as_pad`` unknown pieces are False too).
        """
        if isinstance(texts, str):
            texts = [texts]
        encoded = [self.encode(t) for t in texts]
        length = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
        # parity: the original derives the mask from the ids, not from the sequence lengths.
        return ids, ids != self.pad_id

    def __getstate__(self) -> dict[str, object]:
        # The sentencepiece processor is not picklable: ship the constructor arguments and reload in
        # __setstate__ (DataLoader worker processes, spawn start method).
        return {"spm_path": str(self.spm_path), "unk_as_pad": self.unk_as_pad}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(Path(str(state["spm_path"])), unk_as_pad=bool(state["unk_as_pad"]))

    def __repr__(self) -> str:
        return f"Beit3Tokenizer(spm_path={str(self.spm_path)!r}, unk_as_pad={self.unk_as_pad})"
