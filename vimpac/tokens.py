"""Token ids shared by the tokenizer, the store, masking and the model.

A tokenizer with K codes produces ids 0..K-1. The model's vocabulary adds five special rows
after them, laid out as in the authors' code (for K = 8192: [PAD] = 8193, [MASK] = 8196,
8192 / 8194 / 8195 unused), so released checkpoints load unchanged. [CLS] is not a vocabulary
row: the model keeps it as a separate learned vector.
"""

from __future__ import annotations

from dataclasses import dataclass

NUM_SPECIAL_TOKENS = 5


@dataclass(frozen=True)
class Vocab:
    codebook_size: int

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        return self.codebook_size + 4

    @property
    def num_rows(self) -> int:
        """Rows of the embedding table and width of the masked-token softmax."""
        return self.codebook_size + NUM_SPECIAL_TOKENS


DALLE_VOCAB = Vocab(8192)
