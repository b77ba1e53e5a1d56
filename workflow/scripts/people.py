from cl_ml_tools.steps import common as steps
from cl_ml_tools.steps import people

steps.log_to(snakemake.log[0])
settings = people.Settings.from_config(snakemake.params.settings)
with steps.work():
    people.people_table(
        snakemake.input.faces, snakemake.input.face_embeddings, snakemake.params.ids, snakemake.output[0], settings
    )
