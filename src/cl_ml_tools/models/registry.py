"""The registry: every fact about each model the steps use, in one entry — where its files come from and their
pins, the runtime, the tensors, how an input image is prepared, which output is the embedding and so its
width, which step uses it and (for an image tower) the text tower of its space. The config schema's model
choices, the tables' embedding widths, the preprocessing, search's text tower and the table in
docs/models.md are all derived from these entries (``python -m cl_ml_tools.models`` prints that table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str for a symbolic dim such as "N"
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelFile:
    name: str  # file name in the cache folder <cache>/<model id>/<name>
    url: str
    # None = pin unknown: the first download's sha256 is recorded in <cache>/lock.json and enforced afterwards.
    sha256: str | None
    size: int | None
    member: str | None = None  # path of the file inside the zip archive at `url`


@dataclass(frozen=True)
class ImageInput:
    """How an image becomes the network's input, Hugging Face's image-processor recipe: the shortest edge
    resized to ``resize`` px with ``resample`` (a ``PIL.Image.Resampling`` name), a centre crop of ``crop`` px,
    ×1/255, then (x − mean) / std per channel; RGB, channels first."""

    resize: int
    crop: int
    resample: str
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    version: str
    files: tuple[ModelFile, ...]  # files[0] is the main file (the network)
    licence: str
    source: str  # model page
    runtime: str  # "mediapipe" or "onnxruntime"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str
    notice: str | None = None  # shown when fetching/using (non-commercial licences)
    step: str | None = None  # the config step whose `model` may name it; None for the text tower
    image_input: ImageInput | None = None  # None where the runtime prepares its input (MediaPipe) or for text
    embedding_output: int | None = None  # which of `outputs` is the embedding (read by position, not name)
    text_tower: str | None = None  # an image tower's text counterpart, whose embeddings share its space
    # The file also runs on OpenVINO (models.runtime: auto or openvino), at fp32 or bf16 (docs/models.md).
    openvino: bool = False
    prepared_by: str | None = None  # who prepares the input where neither image_input nor MediaPipe does

    @property
    def embedding_size(self) -> int:
        if self.embedding_output is None:
            raise ModelError(f"model {self.id} gives no embedding")
        size = self.outputs[self.embedding_output].shape[-1]
        assert isinstance(size, int), f"{self.id}: the embedding's last dimension must be fixed"
        return size


_APACHE = "Apache-2.0"
_MEDIAPIPE_PAGE = "https://ai.google.dev/edge/mediapipe/solutions/vision/face_detector"
_INSIGHTFACE_LICENCE = "InsightFace pretrained models: non-commercial research use only"
_INSIGHTFACE_NOTICE = (
    "The InsightFace pretrained models (buffalo_s, buffalo_l) are licensed for non-commercial research use only; "
    "do not use them, or embeddings made with them, commercially."
)
_INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"
_MOBILECLIP_LICENCE = "Apple ML research licence (apple/ml-mobileclip)"
_MOBILECLIP_NOTICE = (
    "MobileCLIP weights are released under Apple's ML research licence (apple/ml-mobileclip); "
    "read its terms before any use beyond research."
)
# Hugging Face files at a fixed commit of their repository, never at `main`: a new upload there would otherwise
# change what a URL serves (and fail its sha256 pin) under a run's feet. Each commit was checked to hold the
# pinned files (docs/models.md, "Where the pins come from").
_XENOVA_DINOV2 = "https://huggingface.co/Xenova/dinov2-small/resolve/c2bb04a51fab207c420665f1946016107bffc701"
_XENOVA_MOBILECLIP = "https://huggingface.co/Xenova/mobileclip_s2/resolve/80568acdfbd3e3b8b5e94a7feb07095a00d622bf"
# The rapidocr wheel on PyPI ships its default PP-OCR networks; the wheel is a zip archive, so its members are
# downloadable files like any other, and an installed rapidocr package already holds the same bytes (cache.py).
_RAPIDOCR_WHEEL = (
    "https://files.pythonhosted.org/packages/59/07/203065283bba0c5e9c10af3602dc25ab3e59ee54dc2d1d22c8faeabf5ed8/"
    "rapidocr-3.10.0-py3-none-any.whl"
)
# InsightFace's (x − 127.5) / 127.5 on the aligned 112×112 crop.
_ARCFACE_INPUT = ImageInput(resize=112, crop=112, resample="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

REGISTRY: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="blaze_face_short_range",
            version="float16/1",
            files=(
                ModelFile(
                    name="blaze_face_short_range.tflite",
                    url="https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/"
                    "float16/1/blaze_face_short_range.tflite",
                    sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
                    size=229746,
                ),
            ),
            licence=_APACHE,
            source=_MEDIAPIPE_PAGE,
            runtime="mediapipe",
            inputs=(TensorSpec("input", (1, 128, 128, 3)),),
            outputs=(TensorSpec("regressors", (1, 896, 16)), TensorSpec("classificators", (1, 896, 1))),
            description="BlazeFace short range (MediaPipe Tasks face detector): faces within about 2 m",
            step="faces",
        ),
        ModelSpec(
            id="face_detection_full_range_sparse",
            version="mediapipe-assets",
            files=(
                # The same bytes ship in the mediapipe==0.10.21 wheel as
                # mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite.
                ModelFile(
                    name="face_detection_full_range_sparse.tflite",
                    url="https://storage.googleapis.com/mediapipe-assets/face_detection_full_range_sparse.tflite",
                    sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
                    size=676746,
                ),
            ),
            licence=_APACHE,
            source=_MEDIAPIPE_PAGE,
            runtime="mediapipe",
            inputs=(TensorSpec("input", (1, 192, 192, 3)),),
            outputs=(TensorSpec("regressors", (1, 2304, 16)), TensorSpec("classificators", (1, 2304, 1))),
            description="BlazeFace full range (sparse): smaller faces, up to about 5 m",
            step="faces",
        ),
        ModelSpec(
            id="arcface_w600k_mbf",
            version="buffalo_s v0.7",
            files=(
                ModelFile(
                    name="w600k_mbf.onnx",
                    url=f"{_INSIGHTFACE_RELEASE}/buffalo_s.zip",
                    sha256="9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
                    size=13616099,
                    member="w600k_mbf.onnx",
                ),
            ),
            licence=_INSIGHTFACE_LICENCE,
            source="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            runtime="onnxruntime",
            inputs=(TensorSpec("input.1", ("N", 3, 112, 112)),),
            # The output name was not checked against the real file offline; callers read names from the
            # session, and check_io compares shapes only.
            outputs=(TensorSpec("516", ("N", 512)),),
            description="ArcFace MobileFaceNet trained on WebFace600K (InsightFace buffalo_s): 512-d face embeddings",
            notice=_INSIGHTFACE_NOTICE,
            step="face_embeddings",
            image_input=_ARCFACE_INPUT,
            embedding_output=0,
            openvino=True,
        ),
        ModelSpec(
            id="arcface_w600k_r50",
            version="buffalo_l v0.7",
            files=(
                ModelFile(
                    name="w600k_r50.onnx",
                    url=f"{_INSIGHTFACE_RELEASE}/buffalo_l.zip",
                    sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
                    size=174383860,
                    member="w600k_r50.onnx",
                ),
            ),
            licence=_INSIGHTFACE_LICENCE,
            source="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            runtime="onnxruntime",
            inputs=(TensorSpec("input.1", ("N", 3, 112, 112)),),
            # As for the MobileFaceNet, the output name is read from the session at run time.
            outputs=(TensorSpec("683", ("N", 512)),),
            description="ArcFace ResNet-50 trained on WebFace600K (InsightFace buffalo_l): 512-d face embeddings",
            notice=_INSIGHTFACE_NOTICE,
            step="face_embeddings",
            image_input=_ARCFACE_INPUT,
            embedding_output=0,
            openvino=True,
        ),
        ModelSpec(
            id="dinov2_small",
            version="Xenova c2bb04a",
            files=(
                ModelFile(
                    name="model.onnx",
                    url=f"{_XENOVA_DINOV2}/onnx/model.onnx",
                    sha256="83141175ec78b4ff9a2bb58a4c7c264ba0054d1c2e122e5a8114b79a8d4179ea",
                    size=88459888,
                ),
            ),
            licence=_APACHE,
            source="https://huggingface.co/facebook/dinov2-small",
            runtime="onnxruntime",
            inputs=(TensorSpec("pixel_values", ("N", 3, 224, 224)),),
            outputs=(TensorSpec("last_hidden_state", ("N", 257, 384)), TensorSpec("pooler_output", ("N", 384))),
            description="DINOv2 ViT-S/14 image features (ONNX export by Xenova)",
            step="dino",
            # Xenova/dinov2-small's preprocessor_config.json: shortest edge 256 (bicubic), centre crop 224,
            # ImageNet mean/std. The embedding is `pooler_output`, the class token after the final layer norm.
            image_input=ImageInput(
                resize=256, crop=224, resample="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
            ),
            embedding_output=1,
            openvino=True,
        ),
        ModelSpec(
            id="mobileclip_s2_image",
            version="Xenova 80568ac",
            files=(
                ModelFile(
                    name="vision_model.onnx",
                    url=f"{_XENOVA_MOBILECLIP}/onnx/vision_model.onnx",
                    sha256="d28b92d7a3a6ba99bd000cce5c91678c0e279dc934c887a3785908a811872a6c",
                    size=143020962,
                ),
            ),
            licence=_MOBILECLIP_LICENCE,
            source="https://huggingface.co/apple/MobileCLIP-S2",
            runtime="onnxruntime",
            inputs=(TensorSpec("pixel_values", ("N", 3, 256, 256)),),
            outputs=(TensorSpec("image_embeds", ("N", 512)),),
            description="MobileCLIP-S2 image tower (ONNX export by Xenova): 512-d embeddings in the text tower's space",
            notice=_MOBILECLIP_NOTICE,
            step="clip",
            # Xenova/mobileclip_s2's: shortest edge 256 (bilinear), centre crop 256, ×1/255 and no mean/std
            # (MobileCLIP was trained on [0, 1] pixels).
            image_input=ImageInput(resize=256, crop=256, resample="bilinear"),
            embedding_output=0,
            openvino=True,
            text_tower="mobileclip_s2_text",
        ),
        ModelSpec(
            id="mobileclip_s2_text",
            version="Xenova 80568ac",
            files=(
                ModelFile(
                    name="text_model.onnx",
                    url=f"{_XENOVA_MOBILECLIP}/onnx/text_model.onnx",
                    sha256="ff82e945c6c652c51df687e10f102a8e43c87d37c9108ff692468be3732f3710",
                    size=253894023,
                ),
                ModelFile(
                    name="tokenizer.json",
                    url=f"{_XENOVA_MOBILECLIP}/tokenizer.json",
                    sha256="72ed5c96db5729294468543e4bc75fce14ca63f58e37300290189ba1c1e52b85",
                    size=2224081,
                ),
            ),
            licence=_MOBILECLIP_LICENCE,
            source="https://huggingface.co/apple/MobileCLIP-S2",
            runtime="onnxruntime",
            inputs=(TensorSpec("input_ids", ("N", 77), dtype="int64"),),
            outputs=(TensorSpec("text_embeds", ("N", 512)),),
            description="MobileCLIP-S2 text tower and its tokenizer (ONNX export by Xenova)",
            notice=_MOBILECLIP_NOTICE,
            embedding_output=0,
        ),
        ModelSpec(
            id="ppocr_v6_small",
            version="rapidocr 3.10.0",
            files=(
                ModelFile(
                    name="PP-OCRv6_det_small.onnx",
                    url=_RAPIDOCR_WHEEL,
                    sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
                    size=9929594,
                    member="rapidocr/models/PP-OCRv6_det_small.onnx",
                ),
                ModelFile(
                    name="PP-OCRv6_rec_small.onnx",
                    url=_RAPIDOCR_WHEEL,
                    sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
                    size=21234383,
                    member="rapidocr/models/PP-OCRv6_rec_small.onnx",
                ),
                ModelFile(
                    name="ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                    url=_RAPIDOCR_WHEEL,
                    sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
                    size=585532,
                    member="rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                ),
            ),
            licence=_APACHE,
            source="https://github.com/RapidAI/RapidOCR",
            runtime="onnxruntime",
            # Detection (a text probability map), then recognition of each line crop (CTC over the 18710
            # characters its metadata lists) and the 0°/180° direction classifier.
            inputs=(
                TensorSpec("x", ("N", 3, "H", "W")),
                TensorSpec("x", ("N", 3, 48, "W")),
                TensorSpec("x", ("N", 3, 48, 192)),
            ),
            outputs=(
                TensorSpec("fetch_name_0", ("N", 1, "H", "W")),
                TensorSpec("fetch_name_0", ("N", "T", 18710)),
                TensorSpec("save_infer_model/scale_0.tmp_1", ("N", 2)),
            ),
            description="PP-OCRv6 small text detection and recognition (Chinese and Latin scripts) with the PP-OCR "
            "text direction classifier, as the rapidocr wheel ships them",
            step="ocr",
            prepared_by="RapidOCR's own",
        ),
    )
}


def _int8(model_id: str, file: ModelFile) -> ModelSpec:
    """The int8-quantised export published beside an fp32 one (same tensors; weights quantised, activations
    quantised on the fly)."""
    base = REGISTRY[model_id]
    return replace(
        base,
        id=f"{model_id}_int8",
        files=(file,),
        description=f"{base.description}; int8 weights (smaller and faster on CPUs, embeddings slightly off fp32)",
        # Not measured on OpenVINO: its dynamically quantised MatMulInteger graph is ONNX Runtime's recipe.
        openvino=False,
    )


REGISTRY["dinov2_small_int8"] = _int8(
    "dinov2_small",
    ModelFile(
        name="model_quantized.onnx",
        url=f"{_XENOVA_DINOV2}/onnx/model_quantized.onnx",
        sha256="3afdc8bc63b50558d6e5770f5b799bb82455c2311183a2de43803f343a29d917",
        size=24451943,
    ),
)
# No MobileCLIP-S2 int8: its convolutions quantised run ~9x slower on ONNX Runtime's CPU (docs/models.md).


class ModelError(Exception):
    """A model that cannot be found, downloaded, verified or loaded. The message is complete and meant for a
    person: it never wraps a library traceback."""


@dataclass(frozen=True)
class Choice:
    """The runtime that runs a network and the precision it computes at."""

    runtime: str = "onnxruntime"
    precision: str = "fp32"

    @property
    def variant(self) -> str:
        """The suffix of the ``model`` tag: empty for ONNX Runtime at fp32, the tag's meaning before runtimes
        could be chosen, so that tables made then still match."""
        return "" if self == DEFAULT_CHOICE else f"{self.runtime}-{self.precision}"


DEFAULT_CHOICE = Choice()


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec
    path: Path  # main file
    paths: dict[str, Path]  # every file by ModelFile.name
    sha256: str  # of the files actually used (cache.combined: the one file's own for most models)
    override: bool  # came from config `models: {id: {path: ...}}`
    variant: str = ""  # the runtime and precision that ran it, where not ONNX Runtime at fp32 (Choice.variant)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def tag(self) -> str:
        """What the tables store in their ``model`` column: the weights, and how they were run where that was
        not ONNX Runtime at fp32 (``dinov2_small@sha256:…+openvino-bf16``)."""
        return f"{self.spec.id}@sha256:{self.sha256}" + (f"+{self.variant}" if self.variant else "")


def weights_tag(tag: str) -> str:
    """A ``model`` tag without its runtime and precision: what identifies the weights. Embeddings of the same
    weights on another runtime or precision stay within cosine 0.999 of each other and can be compared."""
    return tag.partition("+")[0]


def spec_of(model_id: str) -> ModelSpec:
    try:
        return REGISTRY[model_id]
    except KeyError:
        raise ModelError(f"unknown model id {model_id!r}; known ids: {', '.join(sorted(REGISTRY))}") from None


def step_models(step: str) -> list[str]:
    """The ids a step's ``model`` setting may name, in registry order."""
    return [model_id for model_id, spec in REGISTRY.items() if spec.step == step]


def step_embedding_size(step: str) -> int:
    """The width of a step's ``embedding`` column: one for all the models the step may use, since a table
    has one schema."""
    sizes = {REGISTRY[model_id].embedding_size for model_id in step_models(step)}
    if len(sizes) != 1:
        raise ModelError(f"the models of step {step} give embeddings of different sizes ({sorted(sizes)})")
    return sizes.pop()


_noticed: set[str] = set()


def notice(spec: ModelSpec) -> None:
    """Log a model's licence notice, once per process."""
    if spec.notice and spec.id not in _noticed:
        _noticed.add(spec.id)
        log.warning("model %s: %s", spec.id, spec.notice)


def _tensors(tensors: tuple[TensorSpec, ...]) -> str:
    def one(t: TensorSpec) -> str:
        shape = ", ".join(str(d) for d in t.shape)
        return f"`{t.name}` ({shape})" + ("" if t.dtype == "float32" else f" {t.dtype}")

    return ", ".join(one(t) for t in tensors)


def _download(f: ModelFile) -> str:
    if f.member:
        return f"`{f.name}` inside [{f.url.rsplit('/', 1)[-1]}]({f.url})"
    return f"`{f.name}` ([download]({f.url}))"


def _image_input(spec: ModelSpec) -> str:
    r = spec.image_input
    if r is None and spec.prepared_by:
        return spec.prepared_by
    if r is None:
        return "MediaPipe's own" if spec.runtime == "mediapipe" else "tokenizer (77 ids)"
    crop = f", centre {r.crop}" if r.crop != r.resize else ""
    norm = "" if r.mean == (0.0, 0.0, 0.0) and r.std == (1.0, 1.0, 1.0) else f", mean {r.mean} std {r.std}"
    return f"shortest edge {r.resize} ({r.resample}){crop}, ×1/255{norm}"


def markdown_tables() -> str:
    """The registry as the two tables of docs/models.md (a test keeps that file in step with this)."""
    rule = "|---|---|---|---|---|---|---|"
    files = ["| id | step | file | size (bytes) | sha256 | licence | source page |", rule]
    runtimes = ["| id | runtime | version | inputs | outputs | input image | embedding |", rule]
    for spec in REGISTRY.values():
        files.append(
            f"| `{spec.id}` | {spec.step or 'search'} | {' and '.join(_download(f) for f in spec.files)} "
            f"| {' and '.join(str(f.size) for f in spec.files)} | {' and '.join(f'`{f.sha256}`' for f in spec.files)} "
            f"| {spec.licence} | [{spec.source.split('://', 1)[-1]}]({spec.source}) |"
        )
        embedding = "—" if spec.embedding_output is None else f"`{spec.outputs[spec.embedding_output].name}`, "
        embedding += "" if spec.embedding_output is None else f"{spec.embedding_size} float32"
        runtimes.append(
            f"| `{spec.id}` | {'MediaPipe' if spec.runtime == 'mediapipe' else 'ONNX Runtime'} | `{spec.version}` "
            f"| {_tensors(spec.inputs)} | {_tensors(spec.outputs)} | {_image_input(spec)} | {embedding} |"
        )
    return "\n".join(files) + "\n\n" + "\n".join(runtimes) + "\n"
