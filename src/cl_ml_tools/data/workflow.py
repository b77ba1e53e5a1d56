"""Where the Snakemake workflow is: inside an installed wheel (``cl_ml_tools/workflow/``, which setup.py fills
with the repository's ``Snakefile``, ``workflow/{rules,scripts,report}``, ``profiles``, ``envs`` and default
``config.yaml``), or at the top of a checkout. The command line's ``run``, the service's archive job and the tests
run the files this answers with."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

PACKAGED = "workflow"


class PipelineError(Exception):
    """The pipeline cannot be found or started; the message says why."""


def root() -> Path:
    """The folder holding the Snakefile and everything it reads: ``cl_ml_tools/workflow`` in an installed wheel,
    the repository's top folder in a checkout."""
    package = importlib.resources.files("cl_ml_tools")
    if not isinstance(package, Path):
        # Snakemake reads the rules and scripts by path, so they must be files on disk.
        raise PipelineError(f"cl_ml_tools is imported from {package}, not from a folder: install it with pip")
    for candidate in (package / PACKAGED, package.parent.parent):
        if (candidate / "Snakefile").is_file():
            return candidate
    raise PipelineError(f"no Snakefile in {package / PACKAGED} (a wheel) or {package.parent.parent} (a checkout)")


def snakefile() -> Path:
    return root() / "Snakefile"
