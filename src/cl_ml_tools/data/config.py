"""The configuration's one schema (``config.schema.yaml`` beside this module): what ``config.yaml`` may say and
every default. The pipeline (``workflow/rules/common.smk``), the service and the steps' ``Settings``
dataclasses all read it here, so a default lives in that file alone.

The schema names no model ids: each step's ``model`` choices, and the ids the ``models`` section accepts, are
filled in from the model registry when the schema is loaded.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..models.registry import REGISTRY, step_models
from ..models.runtime import RUNTIME_KEYS

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that the schema refuses; the message names the setting and what is wrong."""


@functools.cache
def _schema() -> dict[str, Any]:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    sections = schema["properties"]
    for name, section in sections.items():
        model = section.get("properties", {}).get("model")
        if model is not None:
            model["enum"] = step_models(name)
    sections["models"]["propertyNames"] = {"enum": [*RUNTIME_KEYS, *REGISTRY]}
    precision = sections["models"]["properties"]["precision"]
    precision["propertyNames"] = {"enum": [model_id for model_id, spec in REGISTRY.items() if spec.openvino]}
    return schema


def schema() -> dict[str, Any]:
    """The schema, with the registry's model ids in it (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


@functools.cache
def _validator() -> Any:
    """A validator that writes each missing property's default into the instance before checking it, so that
    defaults of nested sections (``default: {}``) are filled too; as Snakemake's ``validate`` does. Built on
    first use: jsonschema costs a tenth of a CPU-second to import, and every pipeline job imports this module
    for :func:`schema_defaults` alone."""
    import jsonschema

    check_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def properties(validator: Any, props: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]) -> Iterator:
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": properties})


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check ``config`` against the schema and fill in its defaults, in place (and return it)."""
    errors = sorted(_validator()(_schema()).iter_errors(config), key=lambda e: [str(p) for p in e.path])
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "the top level"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"error validating config.yaml: {where}: {first.message}{more}")
    return config


def fill_defaults(schema: Mapping[str, Any], instance: Any) -> Any:
    """Write the schema's defaults into ``instance`` where it lacks them, in place (and return it), without
    checking anything: what :func:`validate` fills in, through the keywords this schema nests with
    (``properties``, ``additionalProperties``, ``items``)."""
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if "default" in sub and name not in instance:
                instance[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name, value in instance.items():
            sub = props.get(name, extra if isinstance(extra, dict) else None)
            if sub is not None:
                fill_defaults(sub, value)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(schema["items"], item)
    return instance


def section_schema(section: str) -> dict[str, Any]:
    """The schema of one section (``faces``, ``server`` …)."""
    return copy.deepcopy(_schema()["properties"][section])


def defaults(section: str) -> dict[str, Any]:
    """A section's settings as the schema fills them in when the config leaves them all out."""
    return fill_defaults(_schema()["properties"][section], {})


def schema_defaults(section: str) -> Callable[[type[T]], type[T]]:
    """Class decorator, applied under ``@dataclass``: each field of a step's settings class defaults to the
    schema's default for that key of ``section``, so the dataclass repeats none of them. A field the schema
    has no default for keeps the one the class gives, or none."""

    def decorate(cls: type[T]) -> type[T]:
        found = defaults(section)
        for name in getattr(cls, "__annotations__", {}):
            if name in found:
                converter = getattr(cls, "CONVERT", {}).get(name)
                setattr(cls, name, converter(found[name]) if converter else found[name])
        return cls

    return decorate
