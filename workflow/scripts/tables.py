from cl_ml_tools import steps, tables

steps.log_to(snakemake.log[0])
with steps.work():
    rows = tables.consolidate(snakemake.wildcards.step, snakemake.input, snakemake.output[0])
    steps.log.info("%s: %d rows from %d parts", snakemake.wildcards.step, rows, len(snakemake.input))
