# cl_ml_tools: photo and video archive -> Parquet tables. Settings live in config.yaml (validated against
# src/cl_ml_tools/data/config.schema.yaml); runtime knobs in profiles/default/config.yaml.

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/files.smk"
include: "workflow/rules/hashes.smk"
include: "workflow/rules/exif.smk"
include: "workflow/rules/places.smk"
include: "workflow/rules/thumbnails.smk"
include: "workflow/rules/hls.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/faces.smk"
include: "workflow/rules/face_embeddings.smk"
include: "workflow/rules/ocr.smk"
include: "workflow/rules/quality.smk"
include: "workflow/rules/dino.smk"
include: "workflow/rules/clip.smk"
include: "workflow/rules/duplicates.smk"
include: "workflow/rules/people.smk"
include: "workflow/rules/events.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        all_targets(),
    default_target: True
