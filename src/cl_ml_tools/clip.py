"""MobileCLIP-S2's text tower, for text search over the ``clip`` step's image embeddings (one space for
images and words). The image side is in :mod:`cl_ml_tools.embeddings`.

Apple's MobileCLIP weights are under Apple's ML research licence (apple/ml-mobileclip); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import models, tokenizer
from .embeddings import l2_normalise

TEXT_MODEL = "mobileclip_s2_text"
TOKENIZER_FILE = "tokenizer.json"


class TextEncoder:
    """The text tower: CLIP BPE ids (77 per text) → L2-normalised 512-d embeddings."""

    def __init__(self, resolved: models.Resolved, threads: int = 1):
        self.resolved = resolved
        self.tokenizer = tokenizer.load(resolved.paths[TOKENIZER_FILE])
        self.session = models.onnx_session(resolved, threads)
        models.check_io(self.session, resolved.spec)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        ids = tokenizer.encode(self.tokenizer, texts)
        (out,) = self.session.run([self.output], {self.input: ids})
        return l2_normalise(np.asarray(out, dtype=np.float32))
