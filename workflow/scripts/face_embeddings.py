import dataclasses

from cl_ml_tools import models
from cl_ml_tools.data import tables
from cl_ml_tools.models import encoders
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import face_embeddings

steps.log_to(snakemake.log[0])
runtime = models.runtime_from_config(snakemake.config)
settings = face_embeddings.Settings.from_config(snakemake.params.settings)
settings = dataclasses.replace(settings, batch_size=runtime.batch(settings.batch_size))
model = encoders.ArcFace(models.read_record(snakemake.input.model), snakemake.threads, runtime.device)
with steps.work():
    rows = face_embeddings.face_embeddings_shard(tables.read_part(snakemake.input.faces), model, settings)
    tables.write_part("face_embeddings", rows, snakemake.output[0])
