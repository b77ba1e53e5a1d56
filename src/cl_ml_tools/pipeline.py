"""``cl-ml-tools run``: the Snakemake pipeline the package carries (:mod:`cl_ml_tools.data.workflow` says where)
on the folders named.

``cl-ml-tools run`` is the plain ``snakemake`` command on that Snakefile, in the working directory, with a config
file it writes (``<results>/run-config.yaml``): the ``--config`` file, else ``./config.yaml``, else the packaged
default, with the folders named on the command line as its inputs and ``--results`` as its results folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .data.workflow import PipelineError, root
from .media.fileio import write_bytes_atomic
from .service import service_config

DEFAULT_CONFIG = "config.yaml"
RUN_CONFIG = "run-config.yaml"
# What the config schema allows as an input's name; anything else in a folder's name becomes "_".
NAME = re.compile(r"[A-Za-z0-9_.-]+")


def input_name(path: str) -> str:
    """The input name of a folder given on the command line: its own name, with characters the config does not
    allow in a name (spaces, for one) replaced by ``_``. The name is part of every file's media_id."""
    name = Path(os.path.abspath(path)).name
    return "_".join(NAME.findall(name)) or "input"


def inputs_from(paths: Sequence[str]) -> dict[str, str]:
    """``inputs`` for the folders given as ``PATH`` (named by :func:`input_name`) or ``NAME=PATH``."""
    inputs: dict[str, str] = {}
    for arg in paths:
        name, sep, path = arg.partition("=")
        if not sep or not NAME.fullmatch(name) or Path(arg).is_dir():
            name, path = input_name(arg), arg
        if not Path(path).is_dir():
            raise PipelineError(f"{path} is not a folder")
        if name in inputs:
            raise PipelineError(f"two folders would be input {name!r}: name them, e.g. {name}_2={path}")
        inputs[name] = os.path.abspath(path)
    return inputs


def run_config(paths: Sequence[str], config_file: str | None, results: str | None) -> dict[str, Any]:
    """The config a run reads: ``config_file``, else ``./config.yaml``, else the packaged default; the folders
    in ``paths`` replace its inputs and ``results`` its results folder."""
    chosen = config_file or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    try:
        config = service_config.read(chosen or root() / DEFAULT_CONFIG)
    except service_config.ConfigError as exc:
        raise PipelineError(str(exc)) from None
    if paths:
        config["inputs"] = inputs_from(paths)
    elif chosen is None:
        # The packaged default's inputs name the repository's sample archive, which a wheel does not carry.
        raise PipelineError("name the folders to process (cl-ml-tools run PATH ...) or a config with inputs")
    config["results"] = results or config.get("results") or "results"
    return config


def command(
    config: dict[str, Any], cores: int | None = None, report: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The Snakemake command line of a run with ``config``, which is written to ``<results>/run-config.yaml``."""
    config_file = Path(config["results"]) / RUN_CONFIG
    config_file.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(config_file, yaml.safe_dump(config, sort_keys=False).encode())
    where = root()
    args = [sys.executable, "-m", "snakemake", "--snakefile", str(where / "Snakefile")]
    # Named, so that a profiles/default in the working directory is not taken for the workflow's.
    args += ["--workflow-profile", str(where / "profiles" / "default")]
    # Replace, not merge into, whatever the Snakefile's `configfile: config.yaml` finds in the working directory:
    # merged, its inputs would be added to the folders named on the command line.
    args += ["--configfile", str(config_file), "--replace-workflow-config"]
    if cores:
        args += ["--cores", str(cores)]
    if report:
        args += ["--report", os.path.abspath(report), "--report-after-run"]
    return [*args, *extra]


def run(args: list[str]) -> int:
    """Run Snakemake in the foreground, its output as it prints it; its exit status."""
    with subprocess.Popen(args) as proc:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached Snakemake too (same process group): wait while it stops its jobs cleanly.
                continue
