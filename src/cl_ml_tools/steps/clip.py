"""The ``clip`` step: MobileCLIP-S2 image embeddings of the preview frames (images and text in one space:
text search). It runs :mod:`.image_embeddings` with its own config section."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.config import schema_defaults
from . import image_embeddings
from .image_embeddings import model, shard

__all__ = ["Settings", "model", "shard"]


@dataclass(frozen=True)
@schema_defaults("clip")
class Settings(image_embeddings.Settings):
    model: str
    batch_size: int
