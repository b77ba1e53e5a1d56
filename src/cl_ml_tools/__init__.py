"""cl_ml_tools: turn a photo and video archive into Parquet tables."""

__version__ = "0.1.0"
