"""ONNX Runtime sessions for the registry's models, and the one base class of the embedding networks (on ONNX
Runtime or OpenVINO)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..media.fileio import atomic_path
from .cache import cache_dir
from .openvino import OpenVinoNetwork
from .registry import DEFAULT_CHOICE, Choice, ModelError, ModelSpec, Resolved, notice
from .runtime import DEVICES

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)


def onnx_session(resolved: Resolved, threads: int = 1, device: str = "cpu") -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for the model: ``threads`` intra-op threads and one inter-op thread, so that
    parallelism stays under the Snakemake rule's ``threads``; on ``device="cuda"`` the CUDA provider with
    the CPU behind it (for operators CUDA lacks), or the CPU alone with a warning where CUDA is missing.

    The graph is loaded from the optimised copy in the cache (:func:`optimized_graph`) when there is one:
    each job then skips ONNX Runtime's graph rewrites, which cost 0.1-0.2 s per load of DINOv2 or
    MobileCLIP-S2 (docs/performance.md)."""
    if resolved.spec.runtime != "onnxruntime":
        raise ModelError(f"model {resolved.id} runs on {resolved.spec.runtime}, not ONNX Runtime")
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(
            f"model {resolved.id} needs ONNX Runtime, which is not installed (pip install onnxruntime)"
        ) from None
    notice(resolved.spec)
    providers = execution_providers(device, onnxruntime.get_available_providers())
    try:
        # The cached graph is optimised for the CPU provider; a GPU session optimises its own at load.
        graph = (
            optimized_graph(resolved, onnxruntime)
            if providers == ["CPUExecutionProvider"]
            else without_prelu(resolved.path.read_bytes())
        )
        session = onnxruntime.InferenceSession(graph, sess_options=_options(onnxruntime, threads), providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph/... errors
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else type(exc).__name__
        raise ModelError(f"model {resolved.id}: ONNX Runtime cannot load {resolved.path}: {detail}") from None
    if providers[0] != "CPUExecutionProvider" and session.get_providers()[0] != providers[0]:
        log.warning(
            "model %s: the CUDA provider could not start (CUDA or cuDNN libraries missing?); running on the CPU",
            resolved.id,
        )
    return session


def _options(onnxruntime: Any, threads: int) -> Any:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: optimiser remarks about unused initialisers are noise here
    return options


def execution_providers(device: str, available: Sequence[str]) -> list[str]:
    """ONNX Runtime providers for ``device``, from those this onnxruntime build has."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise ModelError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    log.warning(
        "models.device is cuda, but this onnxruntime has no CUDA provider (it has %s); running on the CPU. "
        "For the GPU: pip uninstall -y onnxruntime && pip install -e '.[gpu]' (onnxruntime-gpu)",
        ", ".join(available),
    )
    return ["CPUExecutionProvider"]


def optimized_graph(resolved: Resolved, onnxruntime: Any) -> bytes | str:
    """The model's graph after ONNX Runtime's portable ("extended") optimisations and the PRelu rewrite,
    saved once in the cache under ``optimized/`` (keyed by the model's sha256 and the onnxruntime version)
    and read from there by every later CPU session. Layout-specific rewrites (which depend on the CPU's
    instruction set) are left to each session. Where the cache cannot be written, the graph is optimised in
    memory."""
    name = f"{resolved.id}-{resolved.sha256[:16]}-ort{onnxruntime.__version__}.onnx"
    cached = cache_dir() / "optimized" / name
    if cached.is_file():
        return str(cached)
    graph = without_prelu(resolved.path.read_bytes())
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            options = _options(onnxruntime, 1)
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(tmp)
            onnxruntime.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
    except OSError as exc:
        log.info("model %s: optimised graph not cached (%s)", resolved.id, exc)
        return graph
    return str(cached)


def without_prelu(data: bytes) -> bytes:
    """The ONNX graph ``data`` with each PRelu of constant slopes s rewritten as s·x + (1 − s)·Relu(x).

    Exactly the same function, but ONNX Runtime's CPU kernels have no blocked-layout PRelu: on MobileFaceNet
    (60 PRelus) it spends about half its time in PRelu and in the layout conversions around each one, and the
    rewritten graph runs about twice as fast (docs/performance.md). Graphs without PRelu are returned as
    they are, without parsing them."""
    if b"PRelu" not in data:
        return data
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in constants:
            nodes.append(node)
            continue
        x, slope = node.input
        (y,) = node.output
        s = numpy_helper.to_array(constants[slope])
        graph.initializer.append(numpy_helper.from_array((1 - s).astype(s.dtype), f"{y}/one_minus_slope"))
        nodes += [
            helper.make_node("Relu", [x], [f"{y}/relu"]),
            helper.make_node("Mul", [x, slope], [f"{y}/scaled"]),
            helper.make_node("Mul", [f"{y}/relu", f"{y}/one_minus_slope"], [f"{y}/kept"]),
            helper.make_node("Add", [f"{y}/scaled", f"{y}/kept"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _describe_tensors(tensors: list[tuple[str, tuple[Any, ...], str]]) -> str:
    return ", ".join(f"{name} {tuple(shape)} {dtype}" for name, shape, dtype in tensors) or "none"


def check_io(session: Any, spec: ModelSpec) -> None:
    """Check an ONNX Runtime session's inputs and outputs against the spec (see :func:`check_tensors`)."""

    def described(args: list[Any]) -> list[tuple[str, tuple[Any, ...], str]]:
        return [(a.name, tuple(a.shape or ()), _ORT_DTYPES.get(a.type, a.type)) for a in args]

    check_tensors(spec, described(session.get_inputs()), described(session.get_outputs()))


def check_tensors(
    spec: ModelSpec, inputs: list[tuple[str, tuple[Any, ...], str]], outputs: list[tuple[str, tuple[Any, ...], str]]
) -> None:
    """Check a loaded network's inputs and outputs, as (name, shape, dtype), against the spec: count, rank,
    element type and fixed dims (a symbolic dim on either side matches anything). Names are not compared:
    stand-ins and re-exports rename tensors, and callers read names from the network."""
    problems = []
    for kind, expected, found in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        want = [(t.name, t.shape, t.dtype) for t in expected]
        ok = len(found) == len(want) and all(
            len(fs) == len(ws)
            and fd == wd
            and all(not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(fs, ws, strict=True))
            for (_, fs, fd), (_, ws, wd) in zip(found, want, strict=False)
        )
        if not ok:
            problems.append(
                f"  expected {kind}: {_describe_tensors(want)}\n  found {kind}:    {_describe_tensors(found)}"
            )
    if problems:
        raise ModelError(f"model {spec.id} does not have the inputs and outputs it should:\n" + "\n".join(problems))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so that cosine similarity is a dot product."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def embedding_problem(vector: np.ndarray, model_id: str) -> str | None:
    """Why an embedding from ``l2_normalise`` cannot be stored as an ok row, or None. A zero output (a black
    frame through a network that maps it to nothing) stays zero there, and a cosine with it is 0 for every
    query: stored as ok, it would be a file that silently never matches."""
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        return f"{model_id} returned non-finite values (NaN or infinity) for this input"
    if norm < 0.5:  # a unit vector or nothing: l2_normalise leaves only an all-zero output short of 1
        return f"{model_id} returned an all-zero embedding for this input"
    return None


class OnnxModel:
    """The base of every ONNX embedding network: the file on ONNX Runtime (CPU or GPU) or, where the registry
    allows it and ``choice`` says so, on OpenVINO; its tensors checked against the registry's spec, tensor names
    read from the network, the embedding read from the output the registry names (by position: stand-ins and
    re-exports rename tensors). ``embed_inputs`` runs a prepared batch and returns L2-normalised rows;
    subclasses prepare the input. ``resolved.tag``, what the tables' ``model`` column stores, names the runtime
    and precision when they are not ONNX Runtime at fp32."""

    def __init__(self, resolved: Resolved, threads: int = 1, device: str = "cpu", choice: Choice = DEFAULT_CHOICE):
        self.choice = choice
        self.resolved = replace(resolved, variant=choice.variant)
        self.index = resolved.spec.embedding_output or 0
        if choice.runtime == "openvino":
            self.network = OpenVinoNetwork(resolved, threads, choice.precision)
            self.device = "cpu"
            check_tensors(resolved.spec, *self.network.tensors())
            return
        self.session = onnx_session(resolved, threads, device)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        check_io(self.session, resolved.spec)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[self.index].name

    def embed_inputs(self, batch: np.ndarray) -> np.ndarray:
        return l2_normalise(self.run(batch).reshape(len(batch), -1))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The embedding output for a prepared batch, as the network gives it (not normalised)."""
        if self.choice.runtime == "openvino":
            return self.network.run(batch, self.index)
        # io-binding: the output lives on the session's device and is copied back once per batch. On an
        # H200 this took DINOv2 from 4,193 to 5,868 img/s (measured for issue 6, not here); on the CPU it is
        # as fast as session.run (22.0 against 22.6 img/s, within noise), so both devices share one path.
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input, np.ascontiguousarray(batch))
        binding.bind_output(self.output, self.device)
        self.session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return np.asarray(out, dtype=np.float32)
