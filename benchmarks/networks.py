"""Random-weight ONNX copies of the networks the pipeline runs, for throughput benchmarks.

The released weights cannot be fetched on the benchmark machines, and inference speed depends on the graph
(operators, shapes, channel counts, groups), not on the weight values. So each builder here writes the real
architecture with random weights and the input/output names of the released file, built directly with
``onnx.helper`` (no torch needed).

    python benchmarks/networks.py mobilefacenet /tmp/w600k_mbf_random.onnx
    python benchmarks/networks.py mobilefacenet /tmp/w600k_mbf_random.onnx --bench --batch 32 --threads 2,1

Builders: ``mobilefacenet`` (InsightFace buffalo_s / buffalo_sc ``w600k_mbf.onnx``). DINOv2 ViT-S/14 and the
MobileCLIP-S2 towers are to be added beside it on the same ``GraphBuilder``.

Weights are He-style random, but every conv is scaled from the tracked second moment of its input so that its
output has unit second moment, the way the BatchNorm folded into it would normalise a trained network. That
keeps activations O(1) through all the residual stages (no inf/NaN, no denormals that would distort timings).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is the one opset 17 shipped with; older onnxruntime builds refuse files stamped with a newer IR.
IR_VERSION = 8
# PyTorch's PReLU initialises its slopes at 0.25; trained slopes spread around that.
PRELU_SLOPE = 0.25


class GraphBuilder:
    """Accumulates nodes and initializers of one graph and writes it as a checked ONNX file.

    Besides the graph it tracks, per tensor, an estimate of the mean square of its values, so that each layer's
    random weights can be scaled to give unit-scale outputs (see the module docstring).
    """

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.moment: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _unique(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def param(self, prefix: str, array: np.ndarray) -> str:
        name = self._unique(prefix)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs: object) -> str:
        name = self._unique(op)
        out = output or f"{name}_out"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=name, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        group: int = 1,
        output: str | None = None,
    ) -> str:
        """Conv with the following BatchNorm folded in: weight and bias, output scaled to unit mean square."""
        fan_in = cin // group * kernel * kernel
        std = 1.0 / math.sqrt(fan_in * self.moment[x])
        w = self.rng.standard_normal((cout, cin // group, kernel, kernel)) * std
        # A folded BN leaves a per-channel shift; keep it small next to the unit-scale signal.
        b = self.rng.standard_normal(cout) * 0.05
        out = self.node(
            "Conv",
            [x, self.param("conv.weight", w), self.param("conv.bias", b)],
            output,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            dilations=[1, 1],
            group=group,
        )
        self.moment[out] = 1.0
        return out

    def prelu(self, x: str, channels: int) -> str:
        slope = PRELU_SLOPE + self.rng.uniform(-0.1, 0.1, channels)
        # Slope shaped (C, 1, 1) to broadcast over NCHW, as PyTorch exports it.
        out = self.node("PRelu", [x, self.param("prelu.slope", slope.reshape(channels, 1, 1))])
        # For a zero-mean symmetric input, PReLU keeps half the mass and scales the other half by slope².
        self.moment[out] = self.moment[x] * (1 + PRELU_SLOPE**2) / 2
        return out

    def add(self, a: str, b: str) -> str:
        out = self.node("Add", [a, b])
        self.moment[out] = self.moment[a] + self.moment[b]
        return out

    def gemm(self, x: str, cin: int, cout: int, output: str | None = None) -> str:
        """Fully connected layer (``x @ W.T + b``), output scaled to unit mean square."""
        w = self.rng.standard_normal((cout, cin)) / math.sqrt(cin * self.moment[x])
        b = self.rng.standard_normal(cout) * 0.05
        out = self.node("Gemm", [x, self.param("fc.weight", w), self.param("fc.bias", b)], output, transB=1)
        self.moment[out] = 1.0
        return out

    def save(
        self,
        path: Path,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
    ) -> Path:
        graph = helper.make_graph(self.nodes, self.name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(
            graph,
            producer_name="cl_ml_tools.benchmarks.networks",
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, path)
        return path


def parameter_count(path: Path) -> int:
    model = onnx.load(path)
    return sum(math.prod(t.dims) for t in model.graph.initializer)


# --- MobileFaceNet --------------------------------------------------------------------------------------------

# The released w600k_mbf.onnx is 13,616,099 bytes. arcface_torch's get_model("mbf") (blocks=(1, 4, 6, 2),
# scale=2, the "mobilefacenet-0.45G" of its README) has 2.05 M parameters, about 8.2 MB, so it cannot be that
# file. blocks=(2, 8, 12, 4) at scale=2 has 3.39 M parameters counted with BatchNorm unfolded (weight, bias,
# mean, var; 13,561,344 bytes), which leaves ~55 kB for the graph of ~275 nodes and ~500 named tensors: the
# only fit among the arcface_torch variants, and it stays under the 1 GFLOP limit of the ICCV21-MFR mobile track.
MBF_W600K_BLOCKS = (2, 8, 12, 4)
MBF_W600K_SCALE = 2


def _mbf_depthwise(g: GraphBuilder, x: str, cin: int, cout: int, groups: int, stride: int, residual: bool) -> str:
    """arcface_torch ``DepthWise``: 1x1 expand + PReLU, 3x3 depthwise + PReLU, 1x1 linear project."""
    y = g.prelu(g.conv(x, cin, groups, 1), groups)
    y = g.prelu(g.conv(y, groups, groups, 3, stride=stride, pad=1, group=groups), groups)
    y = g.conv(y, groups, cout, 1)
    return g.add(x, y) if residual else y


def mobilefacenet(
    path: Path,
    seed: int = 0,
    *,
    blocks: tuple[int, int, int, int] = MBF_W600K_BLOCKS,
    scale: int = MBF_W600K_SCALE,
    num_features: int = 512,
) -> Path:
    """MobileFaceNet of insightface recognition/arcface_torch/backbones/mobilefacenet.py, as in w600k_mbf.onnx.

    Input ``input.1`` [N, 3, 112, 112] float32 (the (pixel - 127.5) / 127.5 aligned face), output ``516``
    [N, num_features], the names of the released file. BatchNorms are folded into the convs and the final
    BatchNorm1d into the Gemm; onnxruntime folds them the same way when it loads the released file, so the
    executed graph is the same. ``blocks=(1, 4, 6, 2)`` gives arcface_torch's default ``mbf``.
    """
    g = GraphBuilder("mobilefacenet", seed)
    x = "input.1"
    # Preprocessed pixels are roughly uniform on [-1, 1].
    g.moment[x] = 1 / 3
    c = 64 * scale

    x = g.prelu(g.conv(x, 3, c, 3, stride=2, pad=1), c)
    if blocks[0] == 1:
        # Not depthwise: groups=64 is hard-coded upstream, so each group sees 2 channels at scale 2.
        x = g.prelu(g.conv(x, c, c, 3, pad=1, group=64), c)
    else:
        for _ in range(blocks[0]):
            x = _mbf_depthwise(g, x, c, c, 128, 1, residual=True)
    # (in, out, expansion groups of the strided block, residual blocks, their expansion groups)
    stages = [(c, c, 128, blocks[1], 128), (c, 2 * c, 256, blocks[2], 256), (2 * c, 2 * c, 512, blocks[3], 256)]
    for cin, cout, down_groups, n, groups in stages:
        x = _mbf_depthwise(g, x, cin, cout, down_groups, 2, residual=False)
        for _ in range(n):
            x = _mbf_depthwise(g, x, cout, cout, groups, 1, residual=True)
    x = g.prelu(g.conv(x, 2 * c, 512, 1), 512)  # conv_sep
    # GDC head: 7x7 depthwise linear conv over the whole 7x7 map, flatten, Linear + BatchNorm1d.
    x = g.conv(x, 512, 512, 7, group=512)
    x = g.node("Flatten", [x], axis=1)
    g.moment[x] = 1.0
    g.gemm(x, 512, num_features, output="516")

    f32 = TensorProto.FLOAT
    return g.save(
        path,
        [helper.make_tensor_value_info("input.1", f32, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("516", f32, ["N", num_features])],
    )


BUILDERS: dict[str, Callable[..., Path]] = {"mobilefacenet": mobilefacenet}


# --- checks and timing ----------------------------------------------------------------------------------------


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _random_input(sess, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    shape = [batch, *inp.shape[1:]]
    return {inp.name: np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)}


def check_outputs(path: Path, batch: int = 8) -> dict[str, float]:
    """Runs one batch; raises if outputs are not finite or collapse to the same vector for every input."""
    sess = _session(path, threads=1)
    (out,) = sess.run(None, _random_input(sess, batch))
    if not np.isfinite(out).all():
        raise ValueError(f"{path}: non-finite outputs")
    across = float(out.std(axis=0).mean())
    if across < 1e-3:
        raise ValueError(f"{path}: outputs do not depend on the input (std across batch {across:.2g})")
    return {"mean": float(out.mean()), "std": float(out.std()), "std_across_batch": across}


def throughput(path: Path, batch: int = 32, threads: int = 2, seconds: float = 10.0, warmup: int = 3) -> dict:
    """Items per second of one onnxruntime CPU session; best and median over timed runs after warm-up.

    ``cores`` is the CPU time the process got per second of wall time. onnxruntime's threads spin while
    waiting, so an undisturbed run uses about ``threads`` cores; clearly fewer means other processes took the
    CPU and the timing understates the network (``best`` is then the better estimate)."""
    sess = _session(path, threads)
    feed = _random_input(sess, batch)
    for _ in range(warmup):
        sess.run(None, feed)
    times: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    cores = (time.process_time() - cpu_start) / (time.perf_counter() - start)
    times.sort()
    return {
        "batch": batch,
        "threads": threads,
        "runs": len(times),
        "best_per_s": batch / times[0],
        "median_per_s": batch / times[len(times) // 2],
        "cores": cores,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("network", choices=sorted(BUILDERS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bench", action="store_true", help="time onnxruntime CPU inference after building")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", default="2,1", help="comma-separated intra_op_num_threads values to time")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per thread setting")
    args = ap.parse_args(argv)

    path = BUILDERS[args.network](args.out, seed=args.seed)
    params = parameter_count(path)
    print(f"{path}: {params:,} parameters, {path.stat().st_size:,} bytes")
    stats = check_outputs(path)
    print("output check: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    if args.bench:
        for threads in (int(t) for t in args.threads.split(",")):
            r = throughput(path, args.batch, threads, args.seconds)
            print(
                f"batch {r['batch']}, {r['threads']} thread(s): {r['median_per_s']:.1f}/s median, "
                f"{r['best_per_s']:.1f}/s best over {r['runs']} runs"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
