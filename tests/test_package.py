"""The package as a pip user gets it: ``python -m build`` makes an sdist and, from it, a wheel that ``twine check``
accepts; the wheel, installed into a fresh virtual environment outside the checkout, runs the pipeline with
``cl-ml-tools run`` (tables equal to a ``snakemake`` run in the checkout) and the service's archive job.

The environment holds the wheel alone: ``python -m venv --without-pip``, the wheel installed with ``--no-deps``.
Its dependencies come from the test's own environment through a ``.pth`` line naming that environment's
site-packages, added after the install (so pip never sees the checkout's editable install there). A path line
in a ``.pth`` is not a site folder, so the ``.pth`` files in that folder (among them the editable install's,
which would put the checkout's ``src`` on ``sys.path``) are not read. The dependencies are the ones the wheel
declares (checked against its metadata); what the test proves is the wheel's own contents: its modules, the
workflow it carries and its entry point. To show that nothing comes from the checkout, every Python process
of the environment (the command, Snakemake, each step's script, the server) records where its ``cl_ml_tools``
modules were imported from (a probe of this test only, started by a ``.pth``), and all of them must be inside the
environment; the commands run from a folder outside the checkout, with no ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, TEST_MODELS, write_config
from test_service import Server, service_config
from test_workflow import comparable

from cl_ml_tools import cli, pipeline
from cl_ml_tools.data import config as settings
from cl_ml_tools.data import tables

pytestmark = pytest.mark.e2e

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# What the build copies from the checkout: everything but what a checkout accumulates (environments, results,
# caches) and what the package has no use for.
NOT_COPIED = {".git", ".venv", "results", ".cache", "service", "tmp", ".snakemake", "build", "dist", ".whl"}
# What Server sets for its process besides the environment (its own folders, the config).
SERVER_ENV = ("HOME", "TMPDIR", "CL_ML_TOOLS_MODEL_CACHE", "CL_ML_TOOLS_CONFIG", "PYTHONUNBUFFERED")
PROBE = """\
import importlib.machinery, os, sys

class Probe:
    # Notes where the path finder finds each cl_ml_tools module, as it is imported (a server ended by a signal
    # runs no exit handlers), and leaves the import itself to the path finder.
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "cl_ml_tools":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            with open(os.path.join(os.environ["CL_ML_TOOLS_IMPORT_PROBE"], f"{os.getpid()}.txt"), "a") as fh:
                fh.write(f"{name}\\t{spec.origin if spec else None}\\n")
        return None

if os.environ.get("CL_ML_TOOLS_IMPORT_PROBE"):
    sys.meta_path.insert(0, Probe)
"""


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = NOT_COPIED if Path(folder) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` on a copy of the checkout (so the checkout gets no build/ or egg-info): the sdist,
    then the wheel built from the unpacked sdist. No build isolation: the pinned setuptools of the dev extra,
    no network."""
    work = tmp_path_factory.mktemp("build")
    shutil.copytree(REPO, work / "src", ignore=_ignore)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(work / "src")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return work / "dist"


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    # A .pth line that starts with "import" runs at start-up, in every Python process of the environment.
    (site / "cl_ml_tools_probe.py").write_text(PROBE)
    (site / "cl_ml_tools_probe.pth").write_text("import cl_ml_tools_probe\n")
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return folder


def environment(venv: Path, probe: Path) -> dict[str, str]:
    """The environment a pip user has after activating ``venv``: no PYTHONPATH, the test's own environment off
    PATH (system tools such as ffmpeg and exiftool stay)."""
    ours = str(Path(sys.executable).parent)
    path = [str(venv / "bin"), *(p for p in os.environ["PATH"].split(os.pathsep) if p != ours)]
    probe.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"PATH": os.pathsep.join(path), "VIRTUAL_ENV": str(venv), "CL_ML_TOOLS_IMPORT_PROBE": str(probe)}


def assert_inside(venv: Path, probe: Path) -> set[str]:
    """Every cl_ml_tools module the probed processes imported came from ``venv``; their names."""
    found = dict(line.split("\t") for record in probe.glob("*.txt") for line in record.read_text().splitlines())
    outside = {origin for origin in found.values() if not Path(origin).is_relative_to(venv)}
    assert found and not outside, f"imported from outside {venv}: {sorted(outside)}"
    return set(found)


# ------------------------------------------------------------------------------------ the run command, in-process


def test_folders_become_inputs_named_after_themselves(tmp_path: Path) -> None:
    for name in ("2021 holiday", "phone", "Café", "a=b"):
        (tmp_path / name).mkdir()
    (tmp_path / "other" / "phone").mkdir(parents=True)
    args = [str(tmp_path / "2021 holiday"), f"mine={tmp_path / 'phone'}", str(tmp_path / "Café"), str(tmp_path / "a=b")]
    inputs = pipeline.inputs_from(args)
    assert inputs == {
        "2021_holiday": str(tmp_path / "2021 holiday"),
        "mine": str(tmp_path / "phone"),
        "Caf": str(tmp_path / "Café"),
        "a_b": str(tmp_path / "a=b"),
    }
    # The names are ones the config schema takes.
    settings.validate({**yaml.safe_load((REPO / "config.yaml").read_text()), "inputs": inputs})
    with pytest.raises(pipeline.PipelineError, match="two folders would be input 'phone'"):
        pipeline.inputs_from([str(tmp_path / "phone"), str(tmp_path / "other" / "phone")])
    with pytest.raises(pipeline.PipelineError, match="is not a folder"):
        pipeline.inputs_from([str(tmp_path / "missing")])


def test_run_without_folders_or_a_config_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run"]) == cli.EXIT_USAGE
    assert "name the folders to process" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_run_replaces_the_inputs_of_the_working_directorys_config_and_passes_on_what_follows_double_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ./config.yaml gives the settings; the folders named replace its inputs, also for Snakemake, which
    would otherwise merge that file's inputs (its Snakefile says ``configfile: config.yaml``) with them."""
    for name in ("named", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(name)
    write_config(tmp_path, {"other": str(tmp_path / "other")}, hls={"enabled": False})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(tmp_path / "named"), "--results", "out", "--", "--dry-run", "--quiet"]) == 0
    used = yaml.safe_load((tmp_path / "out" / "run-config.yaml").read_text())
    assert used["inputs"] == {"named": str(tmp_path / "named")} and used["hls"]["enabled"] is False
    listed = "".join(p.read_text() for p in (tmp_path / "out" / "inventory").glob("*.jsonl"))
    assert "named.txt" in listed and "other.txt" not in listed
    assert not (tmp_path / "out" / "tables").exists()  # --dry-run reached Snakemake


# ----------------------------------------------------------------------------------------------------- tests


def test_sdist_and_wheel_pass_twine_check_and_the_wheel_carries_the_workflow(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"cl_ml_tools-{VERSION}-py3-none-any.whl", f"cl_ml_tools-{VERSION}.tar.gz"]
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n.removeprefix("cl_ml_tools/workflow/"): zf.read(n) for n in zf.namelist() if "/workflow/" in n}
        assert not [n for n in zf.namelist() if n.startswith(("tests/", "examples/"))]
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        shipped = {Path(n).parts[1] for n in tf.getnames() if "/" in n}
    assert not shipped & {"tests", "examples"}, shipped
    # Every file of the checkout's workflow folders, byte for byte.
    expected = {
        str(p.relative_to(REPO)): p.read_bytes()
        for folder in ("workflow/rules", "workflow/scripts", "workflow/report", "profiles", "envs")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    } | {name: (REPO / name).read_bytes() for name in ("Snakefile", "config.yaml")}
    assert packaged == expected


def test_the_installed_wheel_imports_nothing_from_the_checkout(venv: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    script = (
        "import cl_ml_tools, json; from cl_ml_tools.data import workflow; from importlib import metadata\n"
        "from packaging.requirements import Requirement\n"
        "unmet = [r for r in map(Requirement, metadata.requires('cl_ml_tools'))\n"
        "         if not r.marker and metadata.version(r.name) not in r.specifier]\n"
        "where = [cl_ml_tools.__file__, str(workflow.snakefile()), cl_ml_tools.__version__]\n"
        "print(json.dumps([*where, list(map(str, unmet))]))"
    )
    env = environment(venv, probe)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    package, snakefile, version, unmet = json.loads(out.stdout)
    assert Path(package).is_relative_to(venv) and Path(snakefile).is_relative_to(venv / "lib"), (package, snakefile)
    assert Path(snakefile).parent.name == "workflow" and Path(snakefile).parent.parent.name == "cl_ml_tools"
    # The dependencies this test lends the environment are the ones the wheel asks for.
    assert unmet == [] and version == VERSION
    cli = subprocess.run(
        [str(venv / "bin" / "cl-ml-tools"), "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.strip() == f"cl-ml-tools {VERSION}"
    assert_inside(venv, probe)


def test_cl_ml_tools_run_from_the_wheel_makes_the_tables_of_a_checkout_run(
    venv: Path, sample_run: Path, tmp_path: Path
) -> None:
    """``sample_run`` is ``snakemake`` in the checkout on the sample archive (conftest); the same archive and
    config through the installed command, from another folder, into another results folder."""
    probe = tmp_path / "probe"
    env = environment(venv, probe)
    command = [str(venv / "bin" / "cl-ml-tools"), "run", f"sample={sample_run / 'archive'}"]
    command += [
        "--config",
        str(sample_run / "config.yaml"),
        "--results",
        "out",
        "--cores",
        "2",
        "--report",
        "report.html",
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "steps (100%) done" in proc.stderr
    # The steps ran in the environment's Python too (Snakemake runs each rule's script as a child process).
    assert {"cl_ml_tools.pipeline", "cl_ml_tools.steps.hashes", "cl_ml_tools.steps.faces"} <= assert_inside(venv, probe)
    results = tmp_path / "out"
    used = yaml.safe_load((results / "run-config.yaml").read_text())
    assert used["inputs"] == {"sample": str(sample_run / "archive")} and used["models"] == TEST_MODELS
    for step in tables.TABLES:
        if not (sample_run / "results" / "tables" / f"{step}.parquet").exists():
            continue
        ours = comparable(tables.load(step, results))
        theirs = comparable(tables.load(step, sample_run / "results"))
        pd.testing.assert_frame_equal(ours, theirs, obj=step)
    report = tmp_path / "report.html"
    assert report.stat().st_size > 100_000 and "cl_ml_tools" in report.read_text(errors="replace")
    # A second run resumes: everything is done.
    again = subprocess.run(
        command[:-2], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stderr


def test_the_archive_job_of_a_server_from_the_wheel_runs_the_packaged_pipeline(
    venv: Path, sample_run: Path, tmp_path: Path
) -> None:
    """No ``plugins.archive.snakefile`` in the config: the server finds the pipeline inside the installed
    package. The light steps only (the heavy ones are the run test's); their tables match the checkout run's."""
    probe = tmp_path / "probe"
    off = {"enabled": False}
    config = service_config(
        tmp_path, tmp_path / "storage", {"sample": str(sample_run / "archive")},
        thumbnails=off, hls=off, faces=off, face_embeddings=off, quality=off, dino=off, clip=off, duplicates=off,
        people=off, events=off, report=off, plugins={"archive": {"cores": 2}},
    )  # fmt: skip
    assert "snakefile" not in yaml.safe_load(config.read_text())["plugins"]["archive"]
    python = str(venv / "bin" / "python")
    server = Server(tmp_path, config, command=[python, "-m", "uvicorn", "cl_ml_tools.master:app", "--port", "{port}"])
    server.env = environment(venv, probe) | {k: server.env[k] for k in SERVER_ENV}
    server.start()
    try:
        response = server.client.post("/jobs/archive")
        assert response.status_code == 202, response.text
        result = server.result(response.json()["job_id"], seconds=300)
    finally:
        server.stop()
    assert result["status"] == "ok", result
    assert set(result["tables"]) == {"files", "hashes", "exif"}
    # Videos' perceptual hashes are of their poster frame, a thumbnail: with thumbnails off they are null.
    columns = {"files": None, "exif": None, "hashes": ["media_id", "status", "sha512", "md5", "pixel_sha512"]}
    for step, kept in columns.items():
        ours = comparable(tables.load(step, tmp_path / "storage" / "archive" / "results", columns=kept))
        theirs = comparable(tables.load(step, sample_run / "results", columns=kept))
        pd.testing.assert_frame_equal(ours, theirs, obj=step)
    assert {"cl_ml_tools.master", "cl_ml_tools.service.archive", "cl_ml_tools.steps.hashes"} <= assert_inside(
        venv, probe
    )
