from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import duplicates

steps.log_to(snakemake.log[0])
settings = duplicates.Settings.from_config(snakemake.params.settings)
with steps.work():
    inputs = snakemake.input
    duplicates.duplicates_table(inputs.files, inputs.hashes, inputs.dino or None, snakemake.output[0], settings)
