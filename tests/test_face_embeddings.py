"""ArcFace embeddings through onnxruntime, with a stand-in network of the real tensor names and shapes, and the
aligned crops and embeddings of real faces against InsightFace's recipe (``norm_crop``, then the network run by
onnxruntime directly)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
from conftest import SAMPLE, file_row
from PIL import Image
from skimage.transform import SimilarityTransform
from standins import arcface

from cl_ml_tools import models
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import face_embeddings, faces, thumbnails


@pytest.fixture(scope="module")
def model(test_models) -> encoders.ArcFace:
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": test_models["arcface_w600k_mbf"]})
    return encoders.ArcFace(resolved, threads=2)


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_preprocess_is_insightface_normalisation_in_nchw() -> None:
    batch = np.zeros((2, 112, 112, 3), np.uint8)
    batch[0, 5, 7] = (0, 255, 51)
    batch[1] = 255
    x = encoders.preprocess_crops(batch, models.REGISTRY["arcface_w600k_mbf"].image_input)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32 and x.flags.c_contiguous
    # Channel planes in RGB order: the pixel at row 5, column 7 of the first crop.
    assert x[0, :, 5, 7].tolist() == pytest.approx([-1.0, 1.0, (51 - 127.5) / 127.5])
    assert x[0, 0, 0, 0] == -1.0 and np.all(x[1] == 1.0)


def test_batch_of_one_equals_batch_of_n(model: encoders.ArcFace) -> None:
    batch = crops(9)
    together = model.embed(batch)
    alone = np.vstack([model.embed(batch[i : i + 1]) for i in range(len(batch))])
    assert together.shape == (9, 512) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_tensor_names_come_from_the_session(tmp_path: Path) -> None:
    path = arcface(tmp_path / "renamed.onnx", output_name="embedding_out")
    model = encoders.ArcFace(models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": path}))
    assert model.output == "embedding_out" and model.embed(crops(2)).shape == (2, 512)


def test_a_network_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = arcface(tmp_path / "small.onnx", dim=128)
    resolved = models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": path})
    with pytest.raises(models.ModelError, match="512"):
        encoders.ArcFace(resolved)


def face_row(media_id: str, crop: str | None, face_index: int = 0, status: str = "ok", error: str | None = None):
    return {"media_id": media_id, "input": "t", "path": f"/a/{media_id}.jpg", "status": status, "error": error,
            "frame_index": 0 if status == "ok" else None, "face_index": face_index if status == "ok" else None,
            "crop": crop}  # fmt: skip


def test_shard_rows_keep_errors_and_lost_crops(tmp_path: Path, model: encoders.ArcFace) -> None:
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
        [face_row("a", str(path))], encoders.ArcFace(resolved), face_embeddings.Settings()
    )
    assert [(r["status"], r["error"], r["frame_index"], r["face_index"]) for r in rows] == [
        ("error", "arcface_w600k_mbf returned an all-zero embedding for this input", 0, 0)
    ]
    assert rows[0].get("embedding") is None


def norm_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """insightface/utils/face_align.py's ``norm_crop`` (insightface 0.7): scikit-image's least-squares
    similarity from the landmarks to ``arcface_dst``, applied by ``cv2.warpAffine`` (bilinear, black border).
    BlazeFace has no mouth corners, so the landmarks are eyes, nose tip and mouth centre, and the template's
    mouth corners are averaged (``faces.TEMPLATE``); the coordinates are OpenCV's, pixel i's centre at i."""
    transform = SimilarityTransform.from_estimate(landmarks, faces.TEMPLATE)
    return cv2.warpAffine(image, transform.params[:2], (faces.CROP_SIZE, faces.CROP_SIZE), borderValue=0.0)


@pytest.fixture(scope="module")
def sample_faces(tmp_path_factory: pytest.TempPathFactory, test_models) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """The faces of the sample photos found by the pipeline (real BlazeFace, full range; the four are large
    enough to be cut from the preview), each with its preview and its keypoints in the preview's pixels, from
    the faces table's columns (which are in the oriented original's)."""
    photos = [SAMPLE / "2021 holiday" / "astronaut.jpg", *sorted((SAMPLE / "2023 reunion").glob("*.jpg"))]
    folder = tmp_path_factory.mktemp("faces")
    files = [file_row(path, media_id=f"{i:016x}") for i, path in enumerate(photos)]
    thumbs = thumbnails.thumbnail_shard(files, folder / "thumbs", thumbnails.Settings())
    with faces.Detector(test_models["face_detection_full_range_sparse"], faces.Settings()) as detector:
        rows = faces.faces_shard(files, thumbs, detector, folder / "faces")
    previews = {t["media_id"]: t for t in thumbs if t["role"] == "preview"}
    found = []
    for row in rows:
        preview = previews[row["media_id"]]
        image = np.asarray(Image.open(preview["file"]).convert("RGB"))
        scale = image.shape[1] / preview["source_width"]
        keypoints = np.array([[row[f"{k}_x"], row[f"{k}_y"]] for k in faces.KEYPOINTS]) * scale
        found.append((row, image, keypoints))
    assert len(found) == 4 and all(row["crop_source"] == "preview" for row, _, _ in found)
    return found


def test_aligned_crops_match_insightface_norm_crop(sample_faces) -> None:
    """Each real face's crop against InsightFace's, made from the same keypoints. MediaPipe's keypoints are
    normalised coordinates times the image size (pixel i's centre at i + 0.5), OpenCV's pixel indices (its
    centre at i): the reference gets them 0.5 px lower."""
    means, tails = [], []
    for _, image, keypoints in sample_faces:
        ours = np.asarray(faces.align(Image.fromarray(image), keypoints), np.float32)
        difference = np.abs(ours - norm_crop(image, keypoints[:4] - 0.5))
        means.append(round(float(difference.mean()), 2))
        tails.append(float(difference.max()))
    print("grey levels from norm_crop's, mean per face:", means, "largest:", tails)
    assert max(means) <= 1.0 and max(tails) <= 2


def test_face_embeddings_match_insightface_on_real_faces(sample_faces, test_models) -> None:
    """The face_embeddings step's vector for each sample face against InsightFace's pipeline on the same
    ONNX file: ``norm_crop``, ``cv2.dnn.blobFromImages`` with mean 127.5 and scale 1/127.5 (ArcFaceONNX's
    input for these networks; it swaps the BGR image it reads to RGB, these previews are RGB already),
    onnxruntime run directly. Our crop as aligned agrees to a cosine of 0.99994;
    the step embeds it as stored, a JPEG at ``faces.crop_quality`` 95, and the stand-in's random 8×8
    filters see that compression: 0.9987-0.9994 (the reference crop stored alike gives 0.9995-0.9997)."""
    network = test_models["arcface_w600k_mbf"]
    model = encoders.ArcFace(models.locate("arcface_w600k_mbf", {"arcface_w600k_mbf": network}))
    rows = face_embeddings.face_embeddings_shard([r for r, _, _ in sample_faces], model, face_embeddings.Settings())
    crops = [norm_crop(image, keypoints[:4] - 0.5) for _, image, keypoints in sample_faces]
    blob = cv2.dnn.blobFromImages(crops, 1 / 127.5, (faces.CROP_SIZE, faces.CROP_SIZE), (127.5, 127.5, 127.5))
    session = onnxruntime.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    (references,) = session.run(None, {"input.1": blob})
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    by_face = {(r["media_id"], r["face_index"]): r["embedding"] for r in rows}
    stored = np.stack([by_face[face["media_id"], face["face_index"]] for face, _, _ in sample_faces])
    aligned = model.embed(np.stack([np.asarray(faces.align(Image.fromarray(i), k)) for _, i, k in sample_faces]))
    stored_cosines, aligned_cosines = (np.einsum("ij,ij->i", e, references) for e in (stored, aligned))
    print("cosine with InsightFace's, step:", stored_cosines.round(5), "crop as aligned:", aligned_cosines.round(5))
    assert aligned_cosines.min() >= 0.9999 and stored_cosines.min() >= 0.998
