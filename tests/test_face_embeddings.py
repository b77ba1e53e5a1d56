"""ArcFace embeddings through onnxruntime, with a stand-in network of the real tensor names and shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from standins import arcface

from cl_ml_tools import face_embeddings, models


@pytest.fixture(scope="module")
def model(test_models) -> face_embeddings.ArcFace:
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": test_models["arcface_w600k_mbf"]})
    return face_embeddings.ArcFace(resolved, threads=2)


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_preprocess_is_insightface_normalisation_in_nchw() -> None:
    batch = np.zeros((2, 112, 112, 3), np.uint8)
    batch[0, 5, 7] = (0, 255, 51)
    batch[1] = 255
    x = face_embeddings.preprocess(batch, models.REGISTRY["arcface_w600k_mbf"].image_input)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32 and x.flags.c_contiguous
    # Channel planes in RGB order: the pixel at row 5, column 7 of the first crop.
    assert x[0, :, 5, 7].tolist() == pytest.approx([-1.0, 1.0, (51 - 127.5) / 127.5])
    assert x[0, 0, 0, 0] == -1.0 and np.all(x[1] == 1.0)


def test_batch_of_one_equals_batch_of_n(model: face_embeddings.ArcFace) -> None:
    batch = crops(9)
    together = model.embed(batch)
    alone = np.vstack([model.embed(batch[i : i + 1]) for i in range(len(batch))])
    assert together.shape == (9, 512) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_tensor_names_come_from_the_session(tmp_path: Path) -> None:
    path = arcface(tmp_path / "renamed.onnx", output_name="embedding_out")
    model = face_embeddings.ArcFace(models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": path}))
    assert model.output == "embedding_out" and model.embed(crops(2)).shape == (2, 512)


def test_a_network_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = arcface(tmp_path / "small.onnx", dim=128)
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": path})
    with pytest.raises(models.ModelError, match="512"):
        face_embeddings.ArcFace(resolved)


def face_row(media_id: str, crop: str | None, face_index: int = 0, status: str = "ok", error: str | None = None):
    return {"media_id": media_id, "input": "t", "path": f"/a/{media_id}.jpg", "status": status, "error": error,
            "frame_index": 0 if status == "ok" else None, "face_index": face_index if status == "ok" else None,
            "crop": crop}  # fmt: skip


def test_shard_rows_keep_errors_and_lost_crops(tmp_path: Path, model: face_embeddings.ArcFace) -> None:
    paths = []
    for i, pixels in enumerate(crops(3)):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=95)
    faces = [
        face_row("a", str(paths[0]), 0),
        face_row("a", str(paths[1]), 1),
        face_row("b", None, status="error", error="not a decodable image"),
        face_row("c", str(tmp_path / "gone.jpg")),
        face_row("d", str(paths[2])),
    ]
    rows = face_embeddings.face_embeddings_shard(faces, model, face_embeddings.Settings(batch_size=2))
    by = {(r["media_id"], r["face_index"]): r for r in rows}
    assert len(rows) == 5
    assert by[("b", None)]["status"] == "error" and "face detection failed" in by[("b", None)]["error"]
    assert by[("c", 0)]["status"] == "error" and "face crop unreadable" in by[("c", 0)]["error"]
    ok = [by[k] for k in (("a", 0), ("a", 1), ("d", 0))]
    assert all(r["status"] == "ok" and r["model"] == model.resolved.tag for r in ok)
    expected = model.embed(np.stack([np.asarray(Image.open(p)) for p in paths]))
    np.testing.assert_allclose(np.stack([r["embedding"] for r in ok]), expected, atol=1e-5)


def test_an_all_zero_embedding_is_an_error_row(tmp_path: Path) -> None:
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": arcface(tmp_path / "zero.onnx", dense_scale=0)})
    path = tmp_path / "0.jpg"
    Image.fromarray(crops(1)[0]).save(path)
    rows = face_embeddings.face_embeddings_shard(
        [face_row("a", str(path))], face_embeddings.ArcFace(resolved), face_embeddings.Settings()
    )
    assert [(r["status"], r["error"], r["frame_index"], r["face_index"]) for r in rows] == [
        ("error", "arcface_w600k_mbf returned an all-zero embedding for this input", 0, 0)
    ]
    assert rows[0].get("embedding") is None
