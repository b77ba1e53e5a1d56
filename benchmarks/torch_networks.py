"""Random-weight ONNX copies of the two image encoders, exported from their PyTorch definitions.

The released weights cannot be fetched on the benchmark machines, and CPU inference speed depends on the graph
(operators, shapes, channel counts, groups), not on the weight values. ``networks.py`` writes small networks
directly with ``onnx.helper``; these two are large enough that hand-writing them would risk drifting from the
real graph, so here the upstream model code itself is instantiated with seeded random weights and exported:

``dinov2_small``
    DINOv2 ViT-S/14 like ``Xenova/dinov2-small`` ``onnx/model.onnx``: Hugging Face ``Dinov2Model`` with the
    facebook/dinov2-small config (the class that export was converted from). Input ``pixel_values`` (N, 3, 224, 224);
    outputs ``last_hidden_state`` (N, 257, 384), every token after the final LayerNorm, and ``pooler_output``
    (N, 384), the LayerNormed class token. The position embeddings stay at 518 px (37x37) and are resized
    bicubically inside the graph on every run, as in the released file, so the parameter count is the real one.
    That Resize costs a fixed ~13 ms per call on onnxruntime CPU (a fifth of a batch-1 run at 2 threads);
    ``SessionOptions.add_free_dimension_override_by_name("N", batch)`` lets onnxruntime fold it to a constant.
``mobileclip_s2_image``
    MobileCLIP-S2 image tower (MCi2) like ``Xenova/mobileclip_s2`` ``onnx/vision_model.onnx``: timm's
    ``fastvit_mci2`` with Apple's head (global average pool, then a bias-free 1280x512 projection), structurally
    reparameterised for inference before export. Input ``pixel_values`` (N, 3, 256, 256); output
    ``image_embeds`` (N, 512), not L2-normalised.

Both are exported with opset 17 and a dynamic batch dimension named ``N``, then checked with onnxruntime
(shapes, finite values, agreement with PyTorch, outputs that depend on the input).

Needs torch, timm and transformers besides onnx and onnxruntime, which the project does not install::

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.31 transformers==5.24.0 \\
        onnx==1.23.2 onnxruntime==1.31.1 onnxscript

    /tmp/torchvenv/bin/python benchmarks/torch_networks.py dinov2_small /tmp/dinov2_small_random.onnx
    /tmp/torchvenv/bin/python benchmarks/torch_networks.py mobileclip_s2_image /tmp/mobileclip_s2_image_random.onnx \\
        --bench --batch 1,8,16,32 --threads 2,1 --seconds 10 --profile /tmp/mci2_profile

``--bench`` and ``--profile`` only need numpy and onnxruntime, so with ``--skip-export`` they time an existing
file from any environment that has those (e.g. the project's own venv).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from networks import throughput

OPSET = 17


@dataclass(frozen=True)
class Spec:
    """Interface of the released ONNX file that the random copy must match."""

    input_name: str
    input_shape: tuple[int, int, int]
    outputs: dict[str, tuple[int, ...]]
    released: str
    released_bytes: int | None
    released_size_note: str
    # Range of the preprocessed pixels the released pipeline feeds in.
    input_range: tuple[float, float]


SPECS: dict[str, Spec] = {
    "dinov2_small": Spec(
        input_name="pixel_values",
        input_shape=(3, 224, 224),
        outputs={"last_hidden_state": (257, 384), "pooler_output": (384,)},
        released="Xenova/dinov2-small onnx/model.onnx",
        released_bytes=None,
        released_size_note="~88 MB",
        # ImageNet mean/std normalisation maps [0, 1] to about [-2.1, 2.6].
        input_range=(-2.1, 2.6),
    ),
    "mobileclip_s2_image": Spec(
        input_name="pixel_values",
        input_shape=(3, 256, 256),
        outputs={"image_embeds": (512,)},
        released="Xenova/mobileclip_s2 onnx/vision_model.onnx",
        released_bytes=143_020_962,
        released_size_note="143,020,962 bytes",
        # MobileCLIP uses mean 0 / std 1, i.e. plain [0, 1] pixels.
        input_range=(0.0, 1.0),
    ),
}


def _random_pixels(spec: Spec, batch: int, seed: int = 0) -> np.ndarray:
    """Noise around a different brightness per image and channel.

    Pure i.i.d. noise would make every image look the same after global pooling, which hides a network whose
    output ignores its input.
    """
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.2, 0.8, (batch, spec.input_shape[0], 1, 1))
    unit = np.clip(level + rng.uniform(-0.2, 0.2, (batch, *spec.input_shape)), 0.0, 1.0)
    lo, hi = spec.input_range
    return (lo + (hi - lo) * unit).astype(np.float32)


# --- PyTorch models ---------------------------------------------------------------------------------------------


def _break_ties(model) -> None:
    """Perturbs every float parameter and buffer whose values are all equal (norm scales, zero biases, LayerScale).

    Freshly initialised, those tensors are byte-identical across layers and the exporter would store each value
    once and wire the copies through Identity nodes, leaving a file smaller than the released one and a graph
    shaped unlike it. Trained values are all distinct; small noise around the init gives the same.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.is_floating_point() or tensor.numel() < 2 or not bool((tensor == tensor.flatten()[0]).all()):
                continue
            noise = torch.randn_like(tensor)
            if bool(tensor.flatten()[0] == 0):
                tensor.add_(0.02 * noise)
            else:
                # Relative noise keeps signs, so BatchNorm running variances stay positive.
                tensor.mul_(1 + 0.1 * noise.clamp(-3, 3))


def _calibrate_batchnorm(model, spec: Spec, batch: int = 8) -> None:
    """Sets every BatchNorm's running statistics to those of its input on a random batch.

    With the default statistics (mean 0, variance 1) the random convolutions shrink the signal at every layer
    while the biases do not, so the embedding ends up a constant that ignores the image. Calibrated statistics
    make each normalised conv output unit-scale, as in a trained network, before reparameterisation folds them
    into the convolutions.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        # None = cumulative average, so after one batch the running statistics are exactly that batch's.
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(_random_pixels(spec, batch, seed=12345)))
    model.eval()


def dinov2_small_model():
    import torch
    from transformers import Dinov2Config, Dinov2Model

    # facebook/dinov2-small's config.json; everything not listed is Dinov2Config's default, as there.
    config = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )
    # Eager attention traces to plain MatMul/Softmax/MatMul; the SDPA path would add its own scaling and mask ops.
    config._attn_implementation = "eager"
    encoder = Dinov2Model(config)
    _break_ties(encoder)

    class Dinov2Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, pixel_values):
            out = self.encoder(pixel_values=pixel_values)
            return out.last_hidden_state, out.pooler_output

    return Dinov2Outputs()


def mobileclip_s2_image_model():
    import timm
    import torch
    from timm.utils import reparameterize_model

    model = timm.create_model("fastvit_mci2", num_classes=512)
    # Apple's MCi replaces the classifier with GlobalPool2D: mean over H and W, then `x @ proj` with no bias
    # (timm would load that checkpoint into a Linear with a zero bias; dropping the bias is the original graph).
    in_dim = model.head.fc.in_features
    model.head.fc = torch.nn.Linear(in_dim, 512, bias=False)
    torch.nn.init.normal_(model.head.fc.weight, std=in_dim**-0.5)
    _break_ties(model)
    _calibrate_batchnorm(model, SPECS["mobileclip_s2_image"])
    model.eval()
    # The released file is the inference graph: MobileOne/RepMixer/RepCPE branches folded into single convs.
    return reparameterize_model(model)


MODELS: dict[str, Callable[[], object]] = {
    "dinov2_small": dinov2_small_model,
    "mobileclip_s2_image": mobileclip_s2_image_model,
}


def export(network: str, path: Path, seed: int = 0) -> tuple[int, dict[str, list[np.ndarray]]]:
    """Builds the seeded random model and writes it to ``path``.

    Returns the PyTorch parameter count and the PyTorch outputs for batches of 1 and 3, to compare the ONNX file
    against.
    """
    import torch

    spec = SPECS[network]
    torch.manual_seed(seed)
    model = MODELS[network]()
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    reference: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in (1, 3):
            outs = model(torch.from_numpy(_random_pixels(spec, batch, seed=batch)))
            outs = outs if isinstance(outs, tuple) else (outs,)
            reference[str(batch)] = [o.numpy() for o in outs]

    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(spec.outputs)
    # Trace with batch 2 so that no size-1 batch gets specialised into the graph.
    example = torch.from_numpy(_random_pixels(spec, 2))
    with torch.no_grad():
        # The TorchScript exporter (dynamo=False) is the one Optimum used for the released files, and it takes
        # the named dynamic axes directly.
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[spec.input_name],
            output_names=names,
            dynamic_axes={name: {0: "N"} for name in [spec.input_name, *names]},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return n_params, reference


# --- checks and timing --------------------------------------------------------------------------------------------


def onnx_parameter_count(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _session(path: Path, threads: int, profile_prefix: str | None = None, optimized_path: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_path:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check(network: str, path: Path, reference: dict[str, list[np.ndarray]] | None = None) -> list[str]:
    """Runs batches of 1 and 3 through onnxruntime; raises on a wrong interface, wrong shapes or bad values."""
    spec = SPECS[network]
    sess = _session(path, threads=2)
    inputs = sess.get_inputs()
    if [i.name for i in inputs] != [spec.input_name] or inputs[0].shape != ["N", *spec.input_shape]:
        raise ValueError(f"{path}: inputs {[(i.name, i.shape) for i in inputs]}")
    declared = {o.name: o.shape for o in sess.get_outputs()}
    if list(declared) != list(spec.outputs) or any(s[0] != "N" for s in declared.values()):
        raise ValueError(f"{path}: outputs {declared}")

    report = []
    for batch in (1, 3):
        outs = sess.run(None, {spec.input_name: _random_pixels(spec, batch, seed=batch)})
        for (name, shape), out in zip(spec.outputs.items(), outs, strict=True):
            if out.shape != (batch, *shape):
                raise ValueError(f"{path}: {name} has shape {out.shape}, expected {(batch, *shape)}")
            if not np.isfinite(out).all():
                raise ValueError(f"{path}: {name} has non-finite values")
        if reference is not None:
            for name, out, ref in zip(spec.outputs, outs, reference[str(batch)], strict=True):
                # Relative to the output's scale: random-weight outputs can be small in absolute terms.
                err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))
                if err > 1e-3:
                    raise ValueError(f"{path}: {name} differs from PyTorch by {err:.2g} of its range (batch {batch})")
                report.append(f"batch {batch} {name}: max |onnx - torch| {err:.1e} of max |torch|")
        if batch > 1:
            for name, out in zip(spec.outputs, outs, strict=True):
                # A graph whose output ignores the input (e.g. everything collapsed to the biases) times fine
                # but would not be the network.
                rel = float(out.std(axis=0).mean() / (out.std() + 1e-12))
                if rel < 1e-2:
                    raise ValueError(f"{path}: {name} barely depends on the input (std across batch {rel:.2g})")
                report.append(
                    f"batch {batch} {name}: rms {float(np.sqrt((out**2).mean())):.3g}, std across batch / std {rel:.2f}"
                )
        if network == "dinov2_small" and not np.array_equal(outs[1], outs[0][:, 0]):
            raise ValueError(f"{path}: pooler_output is not last_hidden_state[:, 0]")
    return report


def profile(network: str, path: Path, prefix: Path, batch: int, threads: int, runs: int = 5) -> list[str]:
    """Profiles ``runs`` runs after a warm-up; returns the time per operator type and the optimised graph's ops."""
    spec = SPECS[network]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    optimized = prefix.with_name(prefix.name + "_optimized.onnx")
    sess = _session(path, threads, profile_prefix=str(prefix), optimized_path=optimized)
    feed = {spec.input_name: _random_pixels(spec, batch)}
    sess.run(None, feed)
    for _ in range(runs):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())

    per_op: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    model_us = 0
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            per_op[op] += event["dur"]
            calls[op] += 1
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            model_us += event["dur"]
    # Shares include the warm-up run, which is in the trace too; it only shifts them when warm-up is unusual.
    total = sum(per_op.values())
    lines = [f"profile {trace} (batch {batch}, {threads} thread(s), {runs + 1} runs incl. warm-up)"]
    lines.append(f"  kernel time {total / 1e3:.0f} ms of {model_us / 1e3:.0f} ms in model_run")
    for op, us in per_op.most_common():
        lines.append(f"  {op:<28} {100 * us / total:5.1f} %  {calls[op] // (runs + 1):4d} nodes/run")

    import onnx

    graph = onnx.load(str(optimized), load_external_data=False).graph
    ops = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in graph.node)
    lines.append(f"optimised graph {optimized}: " + ", ".join(f"{op} x{k}" for op, k in ops.most_common()))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("network", choices=sorted(SPECS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-export", action="store_true", help="check and time an existing OUT instead")
    ap.add_argument("--bench", action="store_true", help="time onnxruntime CPU inference")
    ap.add_argument("--batch", default="1,8,16,32", help="comma-separated batch sizes to time")
    ap.add_argument("--threads", default="2,1", help="comma-separated intra_op_num_threads values to time")
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per (batch, threads) setting")
    ap.add_argument("--profile", type=Path, help="write an onnxruntime profile with this prefix and summarise it")
    args = ap.parse_args(argv)

    spec = SPECS[args.network]
    reference = None
    if not args.skip_export:
        n_params, reference = export(args.network, args.out, args.seed)
        print(f"{args.network}: {n_params:,} PyTorch parameters (random, seed {args.seed})")
    size = args.out.stat().st_size
    print(f"{args.out}: {onnx_parameter_count(args.out):,} ONNX initializer values, {size:,} bytes")
    released = f"{spec.released_bytes:,} bytes" if spec.released_bytes else spec.released_size_note
    ratio = f" ({size / spec.released_bytes:.4f}x)" if spec.released_bytes else ""
    print(f"released {spec.released}: {released}{ratio}")
    for line in check(args.network, args.out, reference):
        print("check: " + line)

    batches = [int(b) for b in args.batch.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.bench:
        print("| threads | batch | img/s median | img/s best | runs | CPU cores used | load avg |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for t in threads:
            for b in batches:
                r = throughput(args.out, b, t, args.seconds)
                load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
                print(
                    f"| {t} | {b} | {r['median_per_s']:.1f} | {r['best_per_s']:.1f} | {r['runs']} "
                    f"| {r['cores']:.2f} | {load} |",
                    flush=True,
                )
    if args.profile:
        for line in profile(args.network, args.out, args.profile, max(batches), threads[0]):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
