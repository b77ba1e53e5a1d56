from pathlib import Path

from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import thumbnails

steps.log_to(snakemake.log[0])
with steps.work():
    files = tables.read_part(snakemake.input.files)
    settings = thumbnails.Settings.from_config(snakemake.params.settings)
    rows = thumbnails.thumbnail_shard(files, Path(snakemake.output.images), settings, threads=snakemake.threads)
    tables.write_part("thumbnails", rows, snakemake.output.part)
