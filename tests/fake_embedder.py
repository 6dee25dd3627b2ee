"""A bag-of-tokens stand-in for TagEmbedder: tag vector = mean of a token table's rows.

It has the façade's interface and no torch, so ranking logic can be tested in milliseconds
with a geometry the test chooses. Tests of the real encoder path use tests/tiny_models.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagsmith.text.tokenizer import load_tokenizer


class BagOfTokensEmbedder:
    def __init__(self, table: np.ndarray, fingerprint: str = "fake0000") -> None:
        self.table = np.asarray(table, dtype=np.float32)
        self._fingerprint = fingerprint
        self.calls: list[list[str]] = []

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def model_info(self) -> dict:
        return {"fingerprint": self._fingerprint, "source": "bag of tokens (test)",
                "clip_skip": 1, "representation": "tag", "context": None}

    def embed(self, texts: Sequence[str], *, progress=None, token_ids=None) -> np.ndarray:  # noqa: ANN001
        self.calls.append(list(texts))
        tok = load_tokenizer()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # ids a caller hands over are used as they are (as TagEmbedder does): wrong ones show
        # in the vectors
        ids_of = tok.encode_batch(list(texts)) if token_ids is None else token_ids
        for i, ids in enumerate(ids_of):
            if ids:
                out[i] = self.table[list(ids)].mean(axis=0)
        return out

    def token_embedding_table(self) -> np.ndarray:
        return self.table

    def close(self) -> None:
        pass


def random_table(dim: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((49408, dim)).astype(np.float32)
