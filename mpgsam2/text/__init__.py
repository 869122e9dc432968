"""Text side of MPG-SAM 2: the BEiT-3 sentencepiece tokenizer."""

from mpgsam2.text.tokenizer import Beit3Tokenizer

__all__ = ["Beit3Tokenizer"]
