from cl_ml_tools.steps import registry

registry.run_job("events", snakemake)
