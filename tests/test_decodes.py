"""No original is decoded at full resolution more than once per run: every step's library code on one
12-megapixel JPEG whose small face forces a crop from the original, with Pillow's decoder watched."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import file_row
from PIL import ImageFile
from standins import dinov2
from test_faces import ASTRONAUT, upright

from cl_ml_tools import models
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import faces, hashes, image_embeddings, thumbnails

WIDTH, HEIGHT = 4000, 3000


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[str, tuple[int, int]]]:
    """(file, size decoded) for every image Pillow decodes from a file."""
    seen: list[tuple[str, tuple[int, int]]] = []
    load = ImageFile.ImageFile.load

    def watched(self):
        if self.tile and getattr(self, "filename", None):
            seen.append((str(self.filename), self.size))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", watched)
    return seen


def test_every_step_decodes_the_original_at_full_size_at_most_once(tmp_path: Path, test_models, decodes) -> None:
    photo = tmp_path / "photo.jpg"
    canvas = upright(ASTRONAUT).resize((WIDTH, HEIGHT))
    canvas.paste(upright(ASTRONAUT).crop((120, 10, 330, 230)).resize((330, 345)), (2600, 1800))
    canvas.save(photo, quality=90)
    files = [file_row(photo)]

    hashes.hash_shard(files, hashes.Settings())  # the one full decode: pixel_sha512
    thumbs = thumbnails.thumbnail_shard(files, tmp_path / "thumbs", thumbnails.Settings())
    with faces.Detector(test_models["face_detection_full_range_sparse"], faces.Settings()) as detector:
        found = faces.faces_shard(files, thumbs, detector, tmp_path / "faces")
    assert any(row["crop_source"] == "original" for row in found)  # the small face was cut from the original
    dino = models.locate("dinov2_small", {"dinov2_small": dinov2(tmp_path / "dino.onnx")})
    image_embeddings.embed_shard(thumbs, encoders.ImageEncoder(dino), batch_size=8)

    of_original = [size for name, size in decodes if name == str(photo)]
    assert of_original.count((WIDTH, HEIGHT)) == 1, of_original
    assert len(of_original) == 3  # hashes (full), thumbnails and the face crop (both reduced)
    assert all(w <= WIDTH // 2 for w, _ in of_original if (w, _) != (WIDTH, HEIGHT))
