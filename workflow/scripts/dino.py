from cl_ml_tools import embeddings, steps, tables

steps.log_to(snakemake.log[0])
inputs = snakemake.input
rows = embeddings.embed_part("dino", inputs.thumbnails, inputs.model, snakemake.params.settings, snakemake.threads)
tables.write_part("dino", rows, snakemake.output[0])
