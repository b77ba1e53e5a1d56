from cl_ml_tools import duplicates, steps, tables

steps.log_to(snakemake.log[0])
settings = duplicates.Settings.from_config(snakemake.params.settings)
with steps.work():
    files = tables.read_part(snakemake.input.files)
    hashes = tables.read_part(snakemake.input.hashes)
    dino = tables.read_part(snakemake.input.dino) if snakemake.input.dino else []
    rows = duplicates.find_duplicates(files, hashes, dino, settings)
    tables.write_part("duplicates", rows, snakemake.output[0])
