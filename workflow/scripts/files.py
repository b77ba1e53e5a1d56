from cl_ml_tools import inventory, steps, tables

steps.log_to(snakemake.log[0])
with steps.work():
    entries = inventory.read_shard_list(snakemake.input.shard_list)
    tables.write_part("files", inventory.files_rows(entries, snakemake.wildcards.shard), snakemake.output[0])
