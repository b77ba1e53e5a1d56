from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import hashes

steps.log_to(snakemake.log[0])
with steps.work():
    files = tables.read_part(snakemake.input.files)
    thumbnails = tables.read_part(snakemake.input.thumbnails) if snakemake.input.thumbnails else []
    settings = hashes.Settings.from_config(snakemake.params.settings)
    rows = hashes.hash_shard(files, settings, thumbnails, threads=snakemake.threads)
    tables.write_part("hashes", rows, snakemake.output[0])
