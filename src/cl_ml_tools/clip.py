"""MobileCLIP-S2's text tower, for text search over the ``clip`` step's image embeddings (one space for
images and words). The image side is in :mod:`cl_ml_tools.embeddings`.

Apple's MobileCLIP weights are under Apple's ML research licence (apple/ml-mobileclip); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import models, tokenizer

TOKENIZER_FILE = "tokenizer.json"


class TextEncoder(models.OnnxModel):
    """The text tower: CLIP BPE ids (77 per text) → L2-normalised 512-d embeddings."""

    def __init__(self, resolved: models.Resolved, threads: int = 1, device: str = "cpu"):
        self.tokenizer = tokenizer.load(resolved.paths[TOKENIZER_FILE])
        super().__init__(resolved, threads, device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_inputs(tokenizer.encode(self.tokenizer, texts))
