from cl_ml_tools import people, steps, tables

steps.log_to(snakemake.log[0])
settings = people.Settings.from_config(snakemake.params.settings)
with steps.work():
    previous, next_id = people.read_ids(snakemake.params.ids)
    faces = people.read_faces(snakemake.input.faces, snakemake.input.face_embeddings)
    rows, next_id = people.find_people(faces, settings, previous, next_id)
    people.write_ids(snakemake.params.ids, rows, next_id)
    tables.write_part("people", rows, snakemake.output[0])
