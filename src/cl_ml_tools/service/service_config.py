"""The service's configuration: the workflow's ``config.yaml`` (validated by the workflow's own schema, which
also fills in the defaults), with the service's environment variables applied on top.

The service reads the same file as the pipeline: the step sections (``hashes``, ``faces`` …) are the
defaults of the matching plugins, ``models`` says where the models are, and the sections ``server``,
``storage``, ``worker``, ``mqtt`` and ``plugins`` are the service's own (the pipeline ignores them).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..data import config as settings

CONFIG_ENV = "CL_ML_TOOLS_CONFIG"
DEFAULT_CONFIG = "config.yaml"


class ConfigError(Exception):
    """The config file or an environment variable is wrong; the message says which and how."""


def _whole_number(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be a whole number, not {value!r}") from None


def _as_given(name: str, value: str) -> str:
    return value


# Environment variable → (config section, key, conversion). MQTT_BROKER also turns MQTT on.
ENVIRONMENT: dict[str, tuple[str, str, Callable[[str, str], Any]]] = {
    "LOG_LEVEL": ("server", "log_level", lambda name, value: value.lower()),
    "CL_ML_TOOLS_API_KEY": ("server", "api_key", _as_given),
    "MQTT_BROKER": ("mqtt", "broker", _as_given),
    "MQTT_TOPIC_PREFIX": ("mqtt", "topic_prefix", _as_given),
    "WORKER_THREADS": ("worker", "threads", _whole_number),
}


def apply_environment(config: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``config`` with the service's environment variables written into their sections (before validation,
    so that a bad value is reported like a bad config entry)."""
    out = copy.deepcopy(config)
    for name, (section, key, convert) in ENVIRONMENT.items():
        value = environ.get(name)
        if not value:
            continue
        target = out.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"config '{section}' must be a mapping")
        target[key] = convert(name, value)
        if name == "MQTT_BROKER":
            target["enabled"] = True
    return out


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` checked against the schema the pipeline uses, its defaults filled in, so the
    service accepts exactly what the pipeline accepts."""
    try:
        return settings.validate(copy.deepcopy(config))
    except settings.ConfigError as exc:
        raise ConfigError(str(exc)) from None


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML config file as a mapping (an empty file is an empty mapping), or a ConfigError saying why not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


@dataclass(frozen=True)
class ServiceConfig:
    """The validated config plus what the service derives from it."""

    path: Path
    raw: dict[str, Any]
    """The whole validated config, defaults filled in: step sections and ``models`` included."""

    @property
    def server(self) -> dict[str, Any]:
        return self.raw["server"]

    @property
    def worker(self) -> dict[str, Any]:
        return self.raw["worker"]

    @property
    def mqtt(self) -> dict[str, Any]:
        return self.raw["mqtt"]

    @property
    def storage_dir(self) -> Path:
        return Path(self.raw["storage"]["dir"]).expanduser().resolve()

    @property
    def enabled_plugins(self) -> tuple[str, ...]:
        return tuple(self.raw["plugins"]["enabled"])

    @property
    def max_concurrent_jobs(self) -> int:
        return self.worker["max_concurrent_jobs"] or os.cpu_count() or 1


def load(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """The service config from ``path``, else ``$CL_ML_TOOLS_CONFIG``, else ``config.yaml`` in the working
    directory; relative paths in it are relative to the working directory, as for the pipeline."""
    environ = os.environ if environ is None else environ
    chosen = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    config = validate(apply_environment(read(chosen), environ))
    return ServiceConfig(chosen.resolve(), config)
