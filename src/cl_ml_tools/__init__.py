"""cl_ml_tools: turn a photo and video archive into Parquet tables."""

import os

__version__ = "0.1.0"

# onnxruntime 1.29+ sends usage telemetry from Linux too, and writes a device id under ~/.cache and a file in
# $TMPDIR when it is imported. A tool that reads people's photo archives should not phone home; set
# ORT_DISABLE_TELEMETRY=0 in the environment to allow it. Set here because every import of onnxruntime in
# the package comes after this one.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
