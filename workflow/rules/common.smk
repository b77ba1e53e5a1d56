import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from cl_ml_tools import models
from cl_ml_tools.data import config as settings
from cl_ml_tools.data import inventory, tables
from cl_ml_tools.steps import events, people, places, registry
from cl_ml_tools.steps.report import PAGES as REPORT_PAGES

min_version("9.0")

# OpenBLAS's threads (Snakemake sets OPENBLAS_NUM_THREADS to a job's threads) spin for about 0.1 CPU-s each
# once numpy is imported, and after every BLAS call, before they sleep: a tenth of a CPU-second per job start
# that does nothing (importing the step registry with 2 threads: 0.39 -> 0.22 CPU-s; a (4000, 384) by
# (384, 4000) float32 product is as fast either way). Every job inherits this environment; a value the user
# set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


# The schema is the package's (src/cl_ml_tools/data/config.schema.yaml, shared with the service and the steps'
# Settings); it fills in every default and takes the model choices from the model registry.
try:
    settings.validate(config)
except settings.ConfigError as exc:
    raise WorkflowError(str(exc)) from None

RESULTS = Path(config["results"])
INVENTORY = RESULTS / "inventory"
# Steps run per shard (a part each, then consolidated into a table), steps over the whole archive that read
# the consolidated tables, and the step each reads: all from the step registry (cl_ml_tools.steps.registry).
STEPS = registry.SHARD_STEPS
GLOBAL_STEPS = registry.ARCHIVE_STEPS
ENABLED = [s for s in STEPS + GLOBAL_STEPS if s == "files" or config[s]["enabled"]]
NEEDS = registry.NEEDS
for _step, _needed in NEEDS.items():
    if _step in ENABLED and _needed not in ENABLED:
        raise ValueError(f"config.yaml: {_step}.enabled needs {_needed}.enabled (it reads that step's output)")
MODEL_OVERRIDES = models.overrides_from_config(config)


def _shards():
    """Scan the inputs and refresh the shard lists, in the main Snakemake process only.

    Jobs started by a cluster executor parse this file again; they read the recorded layout instead of
    rescanning (and racing to rewrite the lists)."""
    if not workflow.is_main_process:
        return inventory.shard_names(inventory.read_layout(INVENTORY))
    sharding = config.get("sharding", {})
    n_shards, rewritten = inventory.update_inventory(
        config["inputs"],
        INVENTORY,
        config.get("include", ["*"]),
        config.get("exclude", []),
        shard_size=sharding.get("shard_size", 1000),
        shards=sharding.get("shards"),
    )
    print(
        f"cl_ml_tools: {n_shards} shard(s) under {INVENTORY}; {len(rewritten)} shard list(s) changed",
        file=sys.stderr,
    )
    return inventory.shard_names(n_shards)


SHARDS = _shards()
FILES_PER_SHARD = inventory.largest_shard(INVENTORY)


wildcard_constraints:
    shard=r"\d+",
    step="|".join(STEPS),
    model="|".join(models.REGISTRY),


def part(step, shard="{shard}"):
    return RESULTS / "parts" / step / f"{shard}.parquet"


def log_file(step, name="{shard}"):
    return RESULTS / "logs" / step / f"{name}.log"


def benchmark_file(step, name="{shard}"):
    """Snakemake's per-job record of wall time, CPU time and peak memory (see benchmarks/)."""
    return RESULTS / "benchmarks" / step / f"{name}.tsv"


def all_targets():
    """Every table, and the report's pages when the report is enabled."""
    tables = [RESULTS / "tables" / f"{step}.parquet" for step in ENABLED]
    pages = [RESULTS / "report" / name for name in REPORT_PAGES] if config["report"]["enabled"] else []
    return tables + pages


def shard_runtime(seconds_per_file):
    """Minutes for one shard job, from the files in the fullest shard (not the configured shard_size: the
    shard count is fixed on the first run, so shards grow with the archive) and a per-file cost."""
    return 10 + int(FILES_PER_SHARD * seconds_per_file / 60)


def model_record(step):
    """The record the models rule writes for the model a step uses (see models.smk)."""
    return RESULTS / "models" / f"{config[step]['model']}.json"


def model_sha256(model_id):
    return models.identity(model_id, MODEL_OVERRIDES)


RUNTIME = models.runtime_from_config(config)


def model_runtime(model_id):
    """How the model runs (models.runtime, models.precision, models.device): another choice makes other
    embeddings (the model column says which), so the steps that run it run again."""
    return RUNTIME.decided(model_id)


def model_overrides(model_id):
    """The config's local file for this model only, so that pointing another model elsewhere reruns nothing."""
    return {model_id: str(MODEL_OVERRIDES[model_id])} if model_id in MODEL_OVERRIDES else {}


def consolidate(step, parts, table, log):
    """The tables rule's work: the step's parts linked into its table; the rows, or what was wrong (a part of
    another table version), in the rule's log."""
    with open(log, "w", encoding="utf-8") as out:
        try:
            rows = tables.consolidate(step, parts, table)
        except ValueError as exc:
            out.write(f"{step}: {exc}\n")
            raise
        out.write(f"{step}: {rows} rows from {len(parts)} parts\n")
