from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps

steps.log_to(snakemake.log[0])
with steps.work():
    rows = tables.consolidate(snakemake.wildcards.step, snakemake.input, snakemake.output[0])
    steps.log.info("%s: %d rows from %d parts", snakemake.wildcards.step, rows, len(snakemake.input))
