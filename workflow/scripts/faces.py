from pathlib import Path

from cl_ml_tools import models
from cl_ml_tools.data import tables
from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import faces

steps.log_to(snakemake.log[0])
settings = faces.Settings.from_config(snakemake.params.settings)
model = models.read_record(snakemake.input.model)
with steps.work():
    files = tables.read_part(snakemake.input.files)
    thumbnails = tables.read_part(snakemake.input.thumbnails)
    crops = Path(snakemake.output.crops)
    with faces.Detector(model.path, settings) as detector:
        rows = faces.faces_shard(files, thumbnails, detector, crops, threads=snakemake.threads)
    tables.write_part("faces", rows, snakemake.output.part)
