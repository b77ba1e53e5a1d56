"""``cl_ml_tools.master:app``, the name the production guide and docs/service.md run the HTTP service by
(``uvicorn cl_ml_tools.master:app``); the app itself is :mod:`cl_ml_tools.service.app`."""

from .service.app import app

__all__ = ["app"]
