"""One way to load the models a process runs and to size their batches, for the pipeline's jobs, the service's
runners, search and notebooks alike: they differ only in how a model id becomes its files (a record the
models rule wrote, the verified cache, a download).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from .cache import locate, read_record
from .choose import choose
from .download import fetch
from .registry import Choice, ModelError, Resolved
from .runtime import Runtime, overrides_from_config, runtime_from_config

T = TypeVar("T")


class Loader:
    """The models one process has loaded (ONNX sessions, face detectors), kept for its later calls, with the
    config's runtime (device, GPU batch, runtime and precision on the CPU). Closing it closes what it kept
    that can be closed."""

    def __init__(self, find: Callable[[str], Resolved], runtime: Runtime | None = None, threads: int = 1):
        self._find = find
        self.runtime = runtime or Runtime()
        self.threads = threads
        self._kept: dict[Hashable, Any] = {}

    @classmethod
    def from_records(cls, records: Iterable[str | os.PathLike[str]], config: Mapping[str, Any], threads: int) -> Self:
        """A pipeline job's: the records the models rule wrote (the files verified there), nothing else."""
        by_id = {r.id: r for r in map(read_record, records)}

        def find(model_id: str) -> Resolved:
            if model_id not in by_id:
                raise ModelError(f"this job was given no record of model {model_id}")
            return by_id[model_id]

        return cls(find, runtime_from_config(config), threads)

    @classmethod
    def from_cache(cls, config: Mapping[str, Any], threads: int) -> Self:
        """A server's or a notebook's: the verified cache and the config's local files, never the network (a
        model that is missing is an error naming where to put it)."""
        overrides = overrides_from_config(config)
        return cls(lambda model_id: locate(model_id, overrides), runtime_from_config(config), threads)

    @classmethod
    def fetching(cls, overrides: Mapping[str, Path] | None = None) -> Self:
        """Search's: downloads what the cache lacks."""
        return cls(lambda model_id: fetch(model_id, overrides))

    def keep(self, key: Hashable, load: Callable[[], T]) -> T:
        """What ``load`` gives, made on the first call with this ``key`` and kept for the next ones."""
        if key not in self._kept:
            self._kept[key] = load()
        return self._kept[key]

    def resolved(self, model_id: str) -> Resolved:
        return self.keep(("resolved", model_id), lambda: self._find(model_id))

    def load(self, kind: Callable[[Resolved, int, str, Choice], T], model_id: str) -> T:
        """``kind`` (an :class:`~cl_ml_tools.models.OnnxModel` class) of ``model_id`` on the config's device,
        runtime and precision with this loader's threads."""

        def make() -> T:
            resolved = self.resolved(model_id)
            return kind(resolved, self.threads, self.runtime.device, choose(resolved, self.runtime, self.threads))

        return self.keep((kind, model_id), make)

    def batch(self, cpu_batch: int) -> int:
        return self.runtime.batch(cpu_batch)

    def close(self) -> None:
        for kept in self._kept.values():
            if callable(close := getattr(kept, "close", None)):
                close()
        self._kept.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
