from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import report

steps.log_to(snakemake.log[0])
settings = report.Settings.from_config(snakemake.params.settings)
with steps.work():
    loaded = {step: tables.load(step, snakemake.params.results) for step, _ in snakemake.input.items()}
    report.write_pages(loaded, dict(snakemake.output.items()), settings)
