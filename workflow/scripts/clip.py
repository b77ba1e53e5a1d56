from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import image_embeddings

steps.log_to(snakemake.log[0])
inputs = snakemake.input
image_embeddings.embed_part(
    "clip", inputs.thumbnails, inputs.model, snakemake.output[0], snakemake.config, snakemake.threads
)
