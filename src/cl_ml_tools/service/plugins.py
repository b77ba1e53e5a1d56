"""The service's plugins: each job type runs one pipeline step on one uploaded file and answers with the rows
that step's table would have for that file.

| plugin | pipeline step (table) | accepts (sniffed from the bytes) | runs |
|---|---|---|---|
| ``hash`` | ``hashes`` | any file | (thumbnails, for a video's poster) → hashes |
| ``media_thumbnail`` | ``thumbnails`` | images, videos | thumbnails |
| ``face_detection`` | ``faces`` | images, videos | thumbnails → faces |
| ``face_embedding`` | ``face_embeddings`` | images, videos | thumbnails → faces → face_embeddings |
| ``dino_embedding`` | ``dino`` | images, videos | thumbnails → dino |
| ``clip_embedding`` | ``clip`` | images, videos | thumbnails → clip |
| ``exif`` | ``exif`` | any file | exif |
| ``hls_streaming`` | ``hls`` | videos | hls |

A job's options are the keys of its step's section in ``config.yaml`` (``hashes.pixel``,
``thumbnails.preview_size`` …; not ``enabled``), given as form fields beside the file; the server's config
gives the rest, and the workflow's schema checks the result. This module is the light half, imported by the
HTTP server; the steps run in :mod:`cl_ml_tools.service.runner`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ..data import config as settings
from ..data import tables
from ..steps import registry
from ..steps.hls import Rung

INPUT = "service"
"""The ``input`` column of a job's rows (the pipeline puts the input directory's name there)."""
ARCHIVE = "archive"
"""``POST /jobs/archive``: the whole pipeline over the configured inputs (no upload, no options)."""


@dataclass(frozen=True)
class Plugin:
    """A plugin as the server offers it: its name, the pipeline step it runs (whose table's columns its rows
    have), and what the step registry's entry says of it (:class:`cl_ml_tools.steps.registry.Plugin`)."""

    name: str
    step: str
    kinds: frozenset[str] | None
    batchable: bool = False

    def accepts(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def describe_kinds(self) -> str:
        if self.kinds is None:
            return "any file"
        return " and ".join(f"{k}s" for k in sorted(self.kinds))


PLUGINS: dict[str, Plugin] = {
    name: Plugin(name, step.name, step.plugin.kinds, step.plugin.batchable)
    for name, step in registry.PLUGINS.items()
    if step.plugin is not None
}
NOT_OPTIONS = ("enabled",)
MAX_OPTIONS = 32

# What each plugin's models are chosen by: (step section, key) for every model the plugin loads.
MODEL_KEYS: dict[str, tuple[str, ...]] = {
    name: keys for name, plugin in PLUGINS.items() if (keys := registry.model_keys(plugin.step))
}


class OptionsError(ValueError):
    """Options a client sent that the plugin does not take or that fail the schema; worded for the client."""


@functools.cache
def _step_schemas() -> dict[str, dict[str, Any]]:
    return {p.step: settings.section_schema(p.step) for p in PLUGINS.values()}


# Other names a plugin takes for an option: the production guide's ``algorithm`` for ``hashes.bytes``.
ALIASES: dict[str, dict[str, str]] = {"hash": {"algorithm": "bytes"}}


def option_names(plugin: Plugin) -> list[str]:
    names = [k for k in _step_schemas()[plugin.step].get("properties", {}) if k not in NOT_OPTIONS]
    return names + list(ALIASES.get(plugin.name, {}))


def option_schemas(plugin: Plugin) -> dict[str, dict[str, Any]]:
    """Each option's JSON schema (an alias has its option's), for the OpenAPI document."""
    properties = _step_schemas()[plugin.step].get("properties", {})
    aliases = ALIASES.get(plugin.name, {})
    return {name: properties[aliases.get(name, name)] for name in option_names(plugin)}


def _value(text: str) -> Any:
    """A form field's value: JSON when it parses (numbers, booleans, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_schema_wants(value: Any, schema: Mapping[str, Any]) -> Any:
    """A bare value where the schema wants a list is that list's one item (``algorithm=sha512``)."""
    return [value] if schema.get("type") == "array" and not isinstance(value, list) else value


# Options that bound what one job may cost (pixels decoded, frames and files written, encoder work, memory,
# threads, extra network calls). The server's config is the bound: a client may ask for less, never for more.
# step → option → (the config's section and key that bound it, "max", "min", or "off": work a client may
# turn off, and on only where the server has it on).
BOUNDS: dict[str, dict[str, tuple[str, str, str]]] = {
    "hashes": {
        "max_pixels": ("hashes", "max_pixels", "max"),
        **{k: ("hashes", k, "off") for k in ("pixel", "video", "perceptual")},
    },
    "thumbnails": {
        k: ("thumbnails", k, "max") for k in ("thumb_size", "preview_size", "video_frames", "sheet_grid", "max_pixels")
    },
    "faces": {
        "max_pixels": ("faces", "max_pixels", "max"),
        "min_overlap": ("faces", "min_overlap", "max"),
        # Smaller or less certain faces are more faces: more crops, more embeddings.
        "min_size": ("faces", "min_size", "min"),
        "min_score": ("faces", "min_score", "min"),
        **{k: ("faces", k, "off") for k in ("refine", "crop_from_original")},
    },
    "face_embeddings": {"batch_size": ("face_embeddings", "batch_size", "max")},
    "dino": {"batch_size": ("dino", "batch_size", "max")},
    "clip": {"batch_size": ("clip", "batch_size", "max")},
    # A job's ffmpeg gets the threads one job may use (worker.threads); a client may ask for fewer.
    "hls": {"segment_s": ("hls", "segment_s", "min"), "threads": ("worker", "threads", "max")},
}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _beyond_bounds(step: str, options: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why an option asks for more than the server's config allows, or None."""
    for key, (section, bound_key, side) in BOUNDS.get(step, {}).items():
        value, bound = options.get(key), config[section][bound_key]
        if value is None or (key == "threads" and value == 0):
            continue  # hls threads 0: the server's choice, worker.threads
        if side == "off" and value and not bound:
            return f"option {key}: this server has it off ({section}.{bound_key}: false); a client may not turn it on"
        if (side == "max" and value > bound) or (side == "min" and value < bound):
            word = "above" if side == "max" else "below"
            return f"option {key}: {value} is {word} this server's limit {bound} ({section}.{bound_key})"
    if step == "faces" and "tile_size" in options:
        # Smaller tiles are more network calls per frame; 0 (no tiles) is the cheapest.
        tile, bound = options["tile_size"], config["faces"]["tile_size"]
        if tile != 0 and (bound == 0 or tile < bound):
            return f"option tile_size: {tile} is below this server's limit {bound} (faces.tile_size; 0: no tiles)"
    if step == "hls":
        server = config["hls"]
        if "preset" in options and PRESETS.index(options["preset"]) > PRESETS.index(server["preset"]):
            return (
                f"option preset: {options['preset']} is slower than this server's limit {server['preset']} (hls.preset)"
            )
        ladder, most = options.get("ladder", server["ladder"]), len(server["ladder"])
        if len(ladder) > most:
            return f"option ladder: {len(ladder)} renditions, above this server's limit {most} (hls.ladder)"
        for field in ("height", "video_kbps", "audio_kbps"):
            highest = max(r.get(field, Rung.audio_kbps) for r in server["ladder"])
            if any(r.get(field, Rung.audio_kbps) > highest for r in ladder):
                return f"option ladder: a {field} above this server's limit {highest} (hls.ladder)"
    return None


def parse_options(plugin: Plugin, fields: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a job from its form fields, checked with the step's schema over the server's section
    and against the server's bounds on cost (:data:`BOUNDS`)."""
    import jsonschema

    allowed = option_names(plugin)
    if len(fields) > MAX_OPTIONS:
        raise OptionsError(f"too many form fields ({len(fields)}); the most is {MAX_OPTIONS}")
    unknown = sorted(k for k in fields if k not in allowed)
    if unknown:
        takes = ", ".join(allowed) if allowed else "no options"
        raise OptionsError(f"plugin {plugin.name} does not take {', '.join(map(repr, unknown))}; it takes {takes}")
    aliases = ALIASES.get(plugin.name, {})
    twice = [f"{alias!r} and {key!r}" for alias, key in aliases.items() if alias in fields and key in fields]
    if twice:
        raise OptionsError(f"give one of {twice[0]}: they are the same option")
    schema = _step_schemas()[plugin.step]
    properties = schema.get("properties", {})
    options = {}
    for name, text in sorted(fields.items()):
        key = aliases.get(name, name)
        options[key] = _as_schema_wants(_value(text), properties[key])
    merged = {**config.get(plugin.step, {}), **options}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        # Named as the client named it (``algorithm``, not ``bytes``).
        named = {aliases.get(name, name): name for name in fields}
        where = ".".join(str(named.get(p, p)) for p in first.path) or plugin.step
        raise OptionsError(f"option {where}: {first.message}")
    beyond = _beyond_bounds(plugin.step, options, config)
    if beyond:
        raise OptionsError(f"{beyond}; a client may lower these limits, never raise them")
    return options


def model_ids(plugin: str, config: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The models a job of ``plugin`` would load with these options."""
    step = PLUGINS[plugin].step
    return [
        (options if section == step else {}).get("model") or config[section]["model"]
        for section in MODEL_KEYS.get(plugin, ())
    ]


# Formats named by sniff.sniff_bytes → the MIME type reported for an upload.
MIME_TYPES = {
    "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "heic": "image/heic",
    "heif": "image/heif", "avif": "image/avif", "tiff": "image/tiff", "bmp": "image/bmp",
    "dng": "image/x-adobe-dng", "cr2": "image/x-canon-cr2", "cr3": "image/x-canon-cr3", "nef": "image/x-nikon-nef",
    "arw": "image/x-sony-arw", "orf": "image/x-olympus-orf", "rw2": "image/x-panasonic-rw2",
    "raf": "image/x-fuji-raf", "pef": "image/x-pentax-pef", "srw": "image/x-samsung-srw",
    "mp4": "video/mp4", "mov": "video/quicktime", "3gp": "video/3gpp", "mkv": "video/x-matroska",
    "webm": "video/webm", "avi": "video/x-msvideo", "mpegts": "video/mp2t", "mpeg": "video/mpeg",
    "wmv": "video/x-ms-wmv", "m4a": "audio/mp4", "mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac",
    "ogg": "audio/ogg", "text": "text/plain",
}  # fmt: skip


def mime_type(fmt: str) -> str:
    return MIME_TYPES.get(fmt, "application/octet-stream")


def jsonable(value: Any) -> Any:
    """A value from ``pyarrow``'s ``to_pylist`` as JSON allows it: timestamps in ISO 8601, NaN as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def table_rows(step: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with exactly the step's table columns and types (``tables.to_arrow``), as JSON-safe dicts."""
    return [jsonable(r) for r in tables.to_arrow(step, rows).to_pylist()]


def columns(plugin: str) -> list[str]:
    return tables.SCHEMAS[PLUGINS[plugin].step].names
