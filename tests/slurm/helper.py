"""Helper of tests/slurm/run.sh.

    helper.py prepare WORKDIR       model files under WORKDIR/models and WORKDIR/config.yaml for the sample archive
    helper.py compare RESULTS_A RESULTS_B
                                    every table of two runs equal, paths under the results directories aside
    helper.py count WORKDIR FILES SHARDS
                                    cluster jobs a run of FILES tiny images in SHARDS shards submits, with and
                                    without profiles/slurm's groups (from dry runs; docs/slurm.md has the numbers)

It reuses the test suite's pieces (tests/ on sys.path), so the cluster run uses the same models, config and
notion of "the same table" as tests/test_workflow.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import pandas as pd  # noqa: E402
from conftest import REPO, SAMPLE, SNAKEMAKE, TEST_CACHE, TEST_MODELS, write_config  # noqa: E402
from PIL import Image  # noqa: E402
from standins import arcface, blazeface_files, clip_vocab, dinov2, mobileclip_image, mobileclip_text  # noqa: E402
from test_workflow import comparable  # noqa: E402


def prepare(workdir: Path) -> Path:
    """What conftest's ``test_models`` fixture does (a fixture cannot be called outside pytest), into
    ``workdir/models``, then the config every test run gets."""
    folder = workdir / "models"
    files = blazeface_files(TEST_CACHE)
    files["arcface_w600k_mbf"] = arcface(folder / "arcface_standin.onnx")
    files["dinov2_small"] = dinov2(folder / "dinov2_standin.onnx")
    files["mobileclip_s2_image"] = mobileclip_image(folder / "mobileclip_image_standin.onnx")
    files["mobileclip_s2_text"] = mobileclip_text(folder / "mobileclip_text", clip_vocab(TEST_CACHE))
    TEST_MODELS.update({model_id: {"path": str(path)} for model_id, path in files.items()})
    # Two shards, so that the cluster run shows one group job covering several shards.
    return write_config(workdir, {"sample": str(SAMPLE)}, results="results_local", sharding={"shards": 2})


def compare(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in (a / "tables").glob("*.parquet"))
    other = sorted(p.name for p in (b / "tables").glob("*.parquet"))
    if not names or names != other:
        raise AssertionError(f"different tables: {a}: {names}, {b}: {other}")
    for name in names:
        left = comparable(pd.read_parquet(a / "tables" / name))
        right = comparable(pd.read_parquet(b / "tables" / name))
        try:
            pd.testing.assert_frame_equal(left, right)
        except AssertionError as err:
            raise AssertionError(f"{name} differs between {a} and {b}:\n{err}") from None
    return names


# Jobs Snakemake runs in its own process, never submitted: the workflow's localrules and the target rule.
LOCAL_RULES = {"models", "tables", "all"}


def count(workdir: Path, files: int, shards: int) -> dict[str, int]:
    """Cluster submissions of a first run, read from ``snakemake -n``: each group job once, each job of an
    ungrouped rule that is not local once."""
    archive = workdir / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(archive / f"{i:06d}.png")
    write_config(workdir, {"tiny": str(archive)}, sharding={"shards": shards})
    counts = {}
    for name, profile in (("without groups", "none"), ("profiles/slurm", str(REPO / "profiles" / "slurm"))):
        out = subprocess.run(
            [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-n", "--workflow-profile", profile],
            cwd=workdir, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        groups = len(re.findall(r"^\[.*\] Group job ", out, re.M))
        rules = [r for r in re.findall(r"^(?:local)?rule (\w+):", out, re.M) if r not in LOCAL_RULES]
        counts[name] = groups + len(rules)
    return counts


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "prepare":
        print(prepare(Path(argv[1]).resolve()))
    elif len(argv) == 3 and argv[0] == "compare":
        names = compare(Path(argv[1]), Path(argv[2]))
        print(f"{len(names)} tables equal: {', '.join(n.removesuffix('.parquet') for n in names)}")
    elif len(argv) == 4 and argv[0] == "count":
        counts = count(Path(argv[1]).resolve(), int(argv[2]), int(argv[3]))
        for name, n in counts.items():
            print(f"{argv[3]} shards, {name}: {n} cluster jobs")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
