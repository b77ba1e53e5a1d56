from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import exif

steps.log_to(snakemake.log[0])
with steps.work():
    files = tables.read_part(snakemake.input.files)
    tables.write_part("exif", exif.exif_shard(files, processes=snakemake.threads), snakemake.output[0])
