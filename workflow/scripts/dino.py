from cl_ml_tools import embeddings, steps

steps.log_to(snakemake.log[0])
inputs = snakemake.input
embeddings.embed_part("dino", inputs.thumbnails, inputs.model, snakemake.output[0], snakemake.config, snakemake.threads)
