from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import people, report

steps.log_to(snakemake.log[0])
settings = report.Settings.from_config(snakemake.params.settings)
with steps.work():
    inputs = dict(snakemake.input.items())
    names = people.read_problems(inputs.pop("people_names", None))
    loaded = {step: tables.load(step, snakemake.params.results, report.columns(step)) for step in inputs}
    report.write_pages(loaded, dict(snakemake.output.items()), settings, names)
