"""cl_ml_tools: turn a photo and video archive into Parquet tables."""

import os


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata when asked for: importlib.metadata costs
    35 ms, in every pipeline job, which never asks."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        return metadata.version("cl_ml_tools")
    except metadata.PackageNotFoundError:  # src/ on PYTHONPATH without an install: no metadata to read
        return "unknown"


# onnxruntime 1.29+ sends usage telemetry from Linux too, and writes a device id under ~/.cache and a file in
# $TMPDIR when it is imported. A tool that reads people's photo archives should not phone home; set
# ORT_DISABLE_TELEMETRY=0 in the environment to allow it. Set here because every import of onnxruntime in
# the package comes after this one.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
