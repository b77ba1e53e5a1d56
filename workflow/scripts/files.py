from cl_ml_tools.data import inventory, tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps.files import files_rows

steps.log_to(snakemake.log[0])
with steps.work():
    entries = inventory.read_shard_list(snakemake.input.shard_list)
    tables.write_part("files", files_rows(entries, snakemake.wildcards.shard), snakemake.output[0])
