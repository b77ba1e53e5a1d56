"""The service's plugins in Python, without Snakemake or a server: the notebook way in.

``from cl_ml_tools.plugins import face_detection, face_embedding, dino_embedding, clip_embedding`` (and
``hash``, ``media_thumbnail``, ``exif``, ``places``, ``hls_streaming``, ``ocr``, ``quality``) gives one module per
plugin of the step registry, each with ``run(path, **options) -> pandas.DataFrame``: the rows the plugin's step
table has for that file, with the columns and types of the pipeline's table. Options are the step's config keys
(``hashes.pixel``, ``thumbnails.preview_size`` …). Two keyword arguments are not options: ``config``, a config as
``config.yaml`` holds it (its step sections under the options, its ``models`` section's local files; the
schema's defaults give the rest), and ``out``, the folder for the files a step makes (previews, crops,
renditions; a new temporary folder by default). Models come from the local cache (the production guide's
pre-download) or the config's files, never from the network.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

from ..data import config as settings
from ..data import inventory, tables
from ..models import Loader
from ..steps import registry
from ..steps.files import files_rows


def run(
    plugin: str,
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """The rows of ``plugin``'s step for the file at ``path``: its table's columns, one row per frame, face or
    file as in the pipeline's table. The file's ``input`` is the name of its folder, as for a pipeline input
    that is that folder."""
    target = registry.PLUGINS[plugin].name
    config = dict(config or {})
    schema = settings.section_schema(target)
    unknown = sorted(set(options) - set(schema.get("properties", {})))
    if unknown:
        raise TypeError(f"{plugin} takes no option {', '.join(unknown)}; its options are the {target} config keys")

    def section(step: str) -> dict[str, Any]:
        return {**settings.defaults(step), **config.get(step, {}), **(options if step == target else {})}

    jsonschema.validate(section(target), schema)
    file = Path(path).resolve()
    stat = file.stat()
    entry = inventory.Entry(
        inventory.media_id(file.parent.name, file.name), file.parent.name, file.name, str(file), stat.st_size,
        stat.st_mtime_ns,
    )  # fmt: skip
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"cl_ml_tools-{plugin}-"))
    with Loader.from_cache(config, threads=1) as loader:
        rows = registry.run_with_reads(
            target,
            files_rows([entry], ""),
            section,
            out_dir / target,
            out_dir,
            options.get("threads") or 1,
            loader,
        )
    return tables.frame(target, rows)


def _module(plugin: str) -> types.ModuleType:
    module = types.ModuleType(f"{__name__}.{plugin}", f"The {plugin} plugin: the {registry.PLUGINS[plugin].name} step.")

    def run_plugin(
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any] | None = None,
        out: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> pd.DataFrame:
        return run(plugin, path, config=config, out=out, **options)

    run_plugin.__doc__ = run.__doc__
    run_plugin.__module__ = module.__name__
    run_plugin.__qualname__ = "run"
    module.run = run_plugin  # type: ignore[attr-defined]
    return module


for _plugin in registry.PLUGINS:
    # One module per plugin, made from the registry: `import cl_ml_tools.plugins.hash` finds it too.
    globals()[_plugin] = sys.modules[f"{__name__}.{_plugin}"] = _module(_plugin)
