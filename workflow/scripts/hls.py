from pathlib import Path

from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import hls

steps.log_to(snakemake.log[0])
with steps.work():
    files = tables.read_part(snakemake.input.files)
    settings = hls.Settings.from_config(snakemake.params.settings)
    rows = hls.hls_shard(files, Path(snakemake.output.renditions), settings, threads=snakemake.threads)
    tables.write_part("hls", rows, snakemake.output.part)
