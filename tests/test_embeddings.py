"""DINOv2 and MobileCLIP image embeddings: preprocessing by hand, stand-in towers with the real tensor names, and
the step's rows against onnxruntime run directly on inputs made by Hugging Face's image processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from conftest import SAMPLE, file_row
from PIL import Image
from standins import dinov2, mobileclip_image
from transformers import BitImageProcessorPil, CLIPImageProcessorPil

from cl_ml_tools import models
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import image_embeddings, thumbnails


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, encoders.ImageEncoder]:
    folder = tmp_path_factory.mktemp("towers")
    dino = models.locate("dinov2_small", {"dinov2_small": dinov2(folder / "dino.onnx")})
    clip = models.locate("mobileclip_s2_image", {"mobileclip_s2_image": mobileclip_image(folder / "clip.onnx")})
    return {"dino": encoders.ImageEncoder(dino, 2), "clip": encoders.ImageEncoder(clip, 2)}


def test_shortest_edge_resize_truncates_like_transformers() -> None:
    image = Image.new("RGB", (1024, 768))
    assert encoders.resize_shortest_edge(image, 256, Image.Resampling.BICUBIC).size == (341, 256)
    assert encoders.resize_shortest_edge(Image.new("RGB", (300, 1001)), 256, Image.Resampling.BILINEAR).size == (
        256,
        854,
    )


def test_centre_crop_offsets_round_down() -> None:
    # Red = column, green = row: the crop's first pixel tells where it starts.
    xs, ys = np.meshgrid(np.arange(301), np.arange(256))
    image = Image.fromarray(np.dstack([xs, ys, np.zeros_like(xs)]).astype(np.uint8))
    crop = np.asarray(encoders.center_crop(image, 224))
    assert crop.shape == (224, 224, 3)
    assert crop[0, 0, :2].tolist() == [(301 - 224) // 2, (256 - 224) // 2]
    small = encoders.center_crop(Image.new("RGB", (100, 300), (255, 255, 255)), 224)
    assert small.size == (224, 224) and small.getpixel((0, 100)) == (0, 0, 0)  # padded with black


def test_dino_preprocessing_is_imagenet_normalised_nchw() -> None:
    image = Image.new("RGB", (640, 480), (255, 0, 128))
    x = encoders.preprocessing("dinov2_small")(image)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[:, 100, 100], expected, rtol=1e-5)


def test_clip_preprocessing_is_unit_range_without_mean() -> None:
    image = Image.new("RGB", (256, 512), (255, 0, 51))
    x = encoders.preprocessing("mobileclip_s2_image")(image)
    assert x.shape == (3, 256, 256)
    np.testing.assert_allclose(x[:, 10, 10], [1.0, 0.0, 0.2], rtol=1e-6)


@pytest.mark.parametrize(
    ("model_id", "filter_", "other"),
    [
        ("dinov2_small", Image.Resampling.BICUBIC, Image.Resampling.BILINEAR),
        ("mobileclip_s2_image", Image.Resampling.BILINEAR, Image.Resampling.BICUBIC),
    ],
)
def test_preprocessing_resamples_with_the_models_filter(model_id: str, filter_, other) -> None:
    """Sharp edges resized 1000 → 256 px: the result is Pillow's resize with the model's filter (bicubic for
    DINOv2, bilinear for MobileCLIP), and measurably not the other filter's."""
    pixels = np.zeros((1000, 1000, 3), np.uint8)
    pixels[:, 497:] = 255
    pixels[::7] = 90
    image = Image.fromarray(pixels)
    pre = encoders.preprocessing(model_id)
    x = pre(image)
    recipe = pre.recipe
    x = x * np.asarray(recipe.std, np.float32)[:, None, None] + np.asarray(recipe.mean, np.float32)[:, None, None]

    def expected(resample: Image.Resampling) -> np.ndarray:
        crop = encoders.center_crop(image.resize((256, 256), resample), recipe.crop)
        return np.asarray(crop, np.float32).transpose(2, 0, 1) / 255

    np.testing.assert_allclose(x, expected(filter_), atol=1e-5)
    assert np.abs(x - expected(other)).max() > 0.02


@pytest.mark.parametrize("model_id", ["dinov2_small", "mobileclip_s2_image"])
def test_a_jpeg_preview_is_decoded_at_half_size_for_the_same_input(tmp_path: Path, model_id: str) -> None:
    """A 1024 × 768 JPEG preview reaches the resize at 512 × 384 (DCT scaling), and the network's input
    is then within a few grey levels of the one a full decode gives."""
    xs, ys = np.meshgrid(np.linspace(0, 1, 1024), np.linspace(0, 1, 768))
    pixels = np.dstack([255 * xs, 255 * ys, 127 + 120 * np.sin(40 * xs) * np.cos(25 * ys)]).astype(np.uint8)
    path = tmp_path / "preview.jpg"
    Image.fromarray(pixels).save(path, quality=85)
    pre = encoders.preprocessing(model_id)
    seen = []

    class Recorder:
        resize = pre.resize

        def __call__(self, image: Image.Image, box: encoders.Box | None = None) -> np.ndarray:
            seen.append(image.size)
            return pre(image, box)

    x = encoders.load(path, Recorder())  # type: ignore[arg-type]
    assert seen == [(512, 384)]
    with Image.open(path) as full:
        reference = pre(full)
    scale = 255 * np.asarray(pre.recipe.std, np.float32)[:, None, None]
    difference = np.abs(x - reference) * scale
    assert x.shape == reference.shape and difference.mean() < 1.0 and difference.max() < 8


@pytest.mark.parametrize("step", ["dino", "clip"])
def test_batch_of_one_equals_batch_of_n(towers, step: str) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (300 + 10 * i, 400, 3), dtype=np.uint8)) for i in range(5)]
    encoder = towers[step]
    together = encoder.embed(images)
    alone = np.vstack([encoder.embed([im]) for im in images])
    assert together.shape == (5, 384 if step == "dino" else 512) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_dino_reads_the_pooled_output_whatever_its_name(tmp_path: Path) -> None:
    path = dinov2(tmp_path / "renamed.onnx", pooled_name="cls_after_norm")
    encoder = encoders.ImageEncoder(models.locate("dinov2_small", {"dinov2_small": path}))
    assert encoder.output == "cls_after_norm"


def test_a_tower_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    path = mobileclip_image(tmp_path / "small.onnx", dim=256)
    with pytest.raises(models.ModelError, match="512"):
        encoders.ImageEncoder(models.locate("mobileclip_s2_image", {"mobileclip_s2_image": path}))


def preview(tmp_path: Path, media_id: str, frame: int, seed: int, timestamp: float | None = None) -> dict:
    path = tmp_path / f"{media_id}.{frame}.jpg"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path)
    return {"media_id": media_id, "input": "t", "path": f"/a/{media_id}", "status": "ok", "error": None,
            "role": "preview", "frame_index": frame, "timestamp_s": timestamp, "file": str(path)}  # fmt: skip


def test_shard_rows_video_means_and_errors(tmp_path: Path, towers) -> None:
    thumbs = [
        preview(tmp_path, "img", 0, 1),
        {**preview(tmp_path, "img", 0, 1), "role": "thumb"},
        *(preview(tmp_path, "vid", i, 10 + i, timestamp=0.5 * i) for i in range(3)),
        {**preview(tmp_path, "bad", 0, 2), "status": "error", "error": "truncated", "role": None, "frame_index": None},
        {**preview(tmp_path, "gone", 0, 5), "file": str(tmp_path / "missing.jpg")},
    ]
    encoder = towers["dino"]
    rows = image_embeddings.embed_shard(thumbs, encoder, batch_size=2)
    key = [(r["media_id"], r["frame_index"], r["status"]) for r in rows]
    assert key == [
        ("bad", None, "error"),
        ("gone", 0, "error"),
        ("img", 0, "ok"),
        ("vid", -1, "ok"),
        ("vid", 0, "ok"),
        ("vid", 1, "ok"),
        ("vid", 2, "ok"),
    ]
    by = {(r["media_id"], r["frame_index"]): r for r in rows}
    assert "thumbnails step failed (truncated)" in by[("bad", None)]["error"]
    assert "preview unreadable" in by[("gone", 0)]["error"]
    frames = np.stack([by[("vid", i)]["embedding"] for i in range(3)])
    mean = frames.mean(axis=0)
    np.testing.assert_allclose(by[("vid", -1)]["embedding"], mean / np.linalg.norm(mean), atol=1e-6)
    assert by[("vid", -1)]["timestamp_s"] is None and by[("vid", 2)]["timestamp_s"] == 1.0
    single = encoder.embed([Image.open(thumbs[0]["file"])])[0]
    np.testing.assert_allclose(by[("img", 0)]["embedding"], single, atol=1e-5)
    assert {r["model"] for r in rows if r["status"] == "ok"} == {encoder.resolved.tag}


def test_decoding_ahead_on_several_threads_changes_nothing(tmp_path: Path, towers) -> None:
    thumbs = [preview(tmp_path, f"m{i:02d}", 0, i) for i in range(11)]
    one = image_embeddings.embed_shard(thumbs, towers["clip"], batch_size=3)
    four = image_embeddings.embed_shard(thumbs, towers["clip"], batch_size=3, decoders=4)
    assert [r["media_id"] for r in four] == [r["media_id"] for r in one]
    np.testing.assert_array_equal(np.stack([r["embedding"] for r in four]), np.stack([r["embedding"] for r in one]))


def test_an_all_zero_embedding_is_an_error_row(tmp_path: Path) -> None:
    """A black frame through a tower without bias comes out as zeros: that frame is an error row (never an ok
    row no query can match), and a video's mean is taken over its other frames."""
    path = mobileclip_image(tmp_path / "unbiased.onnx", bias=0.0)
    encoder = encoders.ImageEncoder(models.locate("mobileclip_s2_image", {"mobileclip_s2_image": path}))
    thumbs = [preview(tmp_path, "img", 0, 1), *(preview(tmp_path, "vid", i, 10 + i, timestamp=i) for i in range(3))]
    black = tmp_path / "black.jpg"
    Image.new("RGB", (320, 240)).save(black)
    thumbs += [{**preview(tmp_path, "dark", 0, 2), "file": str(black)}, {**thumbs[2], "file": str(black)}]
    del thumbs[2]
    rows = image_embeddings.embed_shard(thumbs, encoder, batch_size=4)
    by = {(r["media_id"], r["frame_index"]): r for r in rows}
    assert [(r["media_id"], r["frame_index"], r["status"]) for r in rows] == [
        ("dark", 0, "error"),
        ("img", 0, "ok"),
        ("vid", -1, "ok"),
        ("vid", 0, "ok"),
        ("vid", 1, "error"),
        ("vid", 2, "ok"),
    ]
    assert by[("dark", 0)]["error"] == "mobileclip_s2_image returned an all-zero embedding for this input"
    assert by[("dark", 0)].get("embedding") is None and by[("vid", 1)]["timestamp_s"] == 1
    mean = by[("vid", 0)]["embedding"] + by[("vid", 2)]["embedding"]
    np.testing.assert_allclose(by[("vid", -1)]["embedding"], mean / np.linalg.norm(mean), atol=1e-6)
    assert all(np.linalg.norm(r["embedding"]) > 0.99 for r in rows if r["status"] == "ok")


# The published preprocessing of each tower, in Hugging Face's image processors (their torch-free PIL backends).
# DINOv2: facebook/dinov2-small's preprocessor_config.json (BitImageProcessor), value for value.
# MobileCLIP-S2 as open_clip 3.3.0 builds it: model_configs/MobileCLIP-S2.json (image_size 256), pretrained.py's
# MobileCLIP entries (mean (0, 0, 0), std (1, 1, 1), interpolation "bilinear", resize_mode "shortest") and
# transform.py's eval transform (Resize shortest edge, CenterCrop, ToTensor: ×1/255, Normalize).
HF_PREPROCESSING = {
    "dinov2_small": (
        BitImageProcessorPil,
        {
            "do_resize": True, "size": {"shortest_edge": 256}, "resample": 3,  # PIL.Image.BICUBIC
            "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
            "do_rescale": True, "rescale_factor": 0.00392156862745098,
            "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "do_convert_rgb": True,
        },
        "pooler_output",
    ),
    "mobileclip_s2_image": (
        CLIPImageProcessorPil,
        {
            "do_resize": True, "size": {"shortest_edge": 256}, "resample": 2,  # PIL.Image.BILINEAR
            "do_center_crop": True, "crop_size": {"height": 256, "width": 256},
            "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
            "do_convert_rgb": True,
        },
        "image_embeds",
    ),
}  # fmt: skip
SAMPLE_PHOTOS = [
    SAMPLE / "2021 holiday" / "astronaut.jpg",
    SAMPLE / "2021 holiday" / "chelsea the cat.webp",
    SAMPLE / "2021 holiday" / "coffee.png",
    SAMPLE / "2023 reunion" / "hopper.jpg",
    SAMPLE / "2023 reunion" / "together.jpg",
]


@pytest.fixture(scope="module")
def sample_previews(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The thumbnails step's rows for the sample photos (previews from 451×300 to 1024×577)."""
    files = [file_row(path, media_id=f"{i:016x}") for i, path in enumerate(SAMPLE_PHOTOS)]
    return thumbnails.thumbnail_shard(files, tmp_path_factory.mktemp("previews"), thumbnails.Settings())


@pytest.mark.parametrize("model_id", ["dinov2_small", "mobileclip_s2_image"])
def test_embeddings_match_onnxruntime_on_hugging_face_inputs(
    sample_previews: list[dict], test_models, model_id: str
) -> None:
    """The step's row for each sample photo against the same ONNX file run by onnxruntime directly, on the
    pixel values Hugging Face's image processor makes from the preview with the published recipe. The input
    of a full decode is the processor's to float rounding; the step decodes JPEG previews at reduced DCT
    scale (``encoders.load``), which leaves cosines of 0.99975 (DINOv2) and 0.99998 (MobileCLIP) on the
    1024×577 preview, whose odd height the half-scale decode rounds up, and over 0.99999 on the others."""
    processor_class, config, output = HF_PREPROCESSING[model_id]
    processor = processor_class(**config)
    network = test_models[model_id]
    encoder = encoders.ImageEncoder(models.locate(model_id, {model_id: network}))
    rows = image_embeddings.embed_shard(sample_previews, encoder, batch_size=4)
    session = onnxruntime.InferenceSession(str(network), providers=["CPUExecutionProvider"])
    previews = [row for row in sample_previews if row["role"] == "preview"]
    assert [r["media_id"] for r in rows] == [p["media_id"] for p in previews] and len(rows) == len(SAMPLE_PHOTOS)
    cosines = []
    for row, preview in zip(rows, previews, strict=True):
        with Image.open(preview["file"]) as image:
            pixels = processor(images=image, return_tensors="np")["pixel_values"]
            np.testing.assert_allclose(encoder.preprocess(image), pixels[0], atol=1e-5)
        (reference,) = session.run([output], {"pixel_values": pixels})[0]
        cosines.append(float(np.dot(row["embedding"], reference) / np.linalg.norm(reference)))
    print(model_id, "cosine with the reference per photo:", np.round(cosines, 6).tolist())
    assert min(cosines) >= 0.999
