"""The ONNX encoders the ML steps and search run, each an :class:`~cl_ml_tools.models.OnnxModel` with its
registry entry's input recipe: image towers (DINOv2, MobileCLIP-S2's image side) with Hugging Face's
preprocessing, ArcFace on aligned face crops, and MobileCLIP-S2's text tower with its CLIP tokenizer.

Apple's MobileCLIP weights are under Apple's ML research licence (apple/ml-mobileclip); see docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import tokenizer
from .onnx import OnnxModel
from .registry import DEFAULT_CHOICE, Choice, ImageInput, ModelError, Resolved, spec_of

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Preprocess:
    """A registry entry's :class:`~cl_ml_tools.models.ImageInput` applied to a PIL image: the (N, 3, H, W)
    rows the network takes."""

    recipe: ImageInput

    @property
    def resize(self) -> int:
        return self.recipe.resize

    def __call__(self, image: Image.Image, box: Box | None = None) -> np.ndarray:
        """``box``: for an image decoded at a reduced JPEG scale, the region of it that the full decode's
        pixels map to (what ``Image.draft`` returns); see :func:`resize_shortest_edge`."""
        r = self.recipe
        resample = Image.Resampling[r.resample.upper()]
        image = center_crop(resize_shortest_edge(image.convert("RGB"), r.resize, resample, box), r.crop)
        x = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        return ((x - np.asarray(r.mean, np.float32)) / np.asarray(r.std, np.float32)).transpose(2, 0, 1)


def preprocessing(model_id: str) -> Preprocess:
    """How ``model_id``'s registry entry prepares an image."""
    recipe = spec_of(model_id).image_input
    if recipe is None:
        raise ModelError(f"model {model_id} takes no image input")
    return Preprocess(recipe)


def resize_shortest_edge(
    image: Image.Image, size: int, resample: Image.Resampling, box: Box | None = None
) -> Image.Image:
    """The shorter side to ``size``, the longer one scaled and truncated to an integer, as
    ``transformers.image_transforms.get_resize_output_image_size`` does.

    With ``box`` (``Image.draft``'s (0, 0, width / scale, height / scale)), the output size and the resize's
    sampling positions are the full decode's: a reduced decode rounds an odd side up (577 px → 289 at 1/2),
    and sizing from that image gives 453 px where the full decode gives 454, shifted and stretched by up to a
    pixel. Dividing by a power of two is exact, so the box's aspect ratio is the full decode's to the bit."""
    w, h = (box[2] - box[0], box[3] - box[1]) if box else image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if box is None and new == image.size:
        return image
    return image.resize(new, resample, box=box)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size``×``size`` crop from the centre (offsets rounded down, like Hugging Face's ``center_crop``);
    an image smaller than the crop is padded with black first, as there."""
    w, h = image.size
    if w < size or h < size:
        padded = Image.new("RGB", (max(w, size), max(h, size)))
        padded.paste(image, ((padded.width - w) // 2, (padded.height - h) // 2))
        image, (w, h) = padded, padded.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageEncoder(OnnxModel):
    """An ONNX image tower with its registry entry's preprocessing."""

    def __init__(self, resolved: Resolved, threads: int = 1, device: str = "cpu", choice: Choice = DEFAULT_CHOICE):
        self.preprocess = preprocessing(resolved.id)
        super().__init__(resolved, threads, device, choice)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings of preprocessed images (N, 3, H, W)."""
        return self.embed_inputs(batch)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_batch(np.stack([self.preprocess(im) for im in images]))


def load(path: str | Path, preprocess: Preprocess) -> np.ndarray:
    """A preview file, decoded and preprocessed for the network. A JPEG preview is decoded at the smallest
    DCT scale whose shorter side still covers the resize (1/2 for a 1024 × 768 preview) and resized with the
    full decode's geometry: the input then differs from a full decode's by a few grey levels at edges
    (docs/models.md), and decoding plus resizing cost half as much (8.1 → 3.9 ms per DINOv2 input, 6.0 →
    2.8 ms per MobileCLIP one; docs/performance.md)."""
    with Image.open(path) as image:
        drafted = image.draft("RGB", (preprocess.resize, preprocess.resize))
        return preprocess(image, drafted[1] if drafted else None)


def preprocess_crops(crops: np.ndarray, recipe: ImageInput) -> np.ndarray:
    """(N, 112, 112, 3) RGB uint8 aligned crops → (N, 3, 112, 112) float32, ×1/255 then (x − mean) / std
    (for ArcFace, InsightFace's (x − 127.5) / 127.5: [-1, 1])."""
    scaled = crops.astype(np.float32) * (1.0 / 255.0)
    return (
        ((scaled - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32))
        .transpose(0, 3, 1, 2)
        .copy()
    )


class ArcFace(OnnxModel):
    """An ArcFace network (tensor names from the session, shapes checked against the registry)."""

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised float32 embeddings of (N, 112, 112, 3) RGB uint8 crops."""
        recipe = self.resolved.spec.image_input
        assert recipe is not None, f"{self.resolved.id} has no image input in the registry"
        return self.embed_inputs(preprocess_crops(crops, recipe))


TOKENIZER_FILE = "tokenizer.json"


class TextEncoder(OnnxModel):
    """The text tower: CLIP BPE ids (77 per text) → L2-normalised 512-d embeddings."""

    def __init__(self, resolved: Resolved, threads: int = 1, device: str = "cpu", choice: Choice = DEFAULT_CHOICE):
        self.tokenizer = tokenizer.load(resolved.paths[TOKENIZER_FILE])
        super().__init__(resolved, threads, device, choice)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_inputs(tokenizer.encode(self.tokenizer, texts))
