# People are clustered across the whole archive, so this step reads the consolidated tables, not parts.
# The names file is an input (editing it reruns the step) only while it exists: a missing one is a problem the
# step reports, not a reason for Snakemake to stop the run. `files` finds its examples' files.
NAMES = config["people"]["names"]


rule people:
    input:
        faces=RESULTS / "tables" / "faces.parquet",
        face_embeddings=RESULTS / "tables" / "face_embeddings.parquet",
        files=RESULTS / "tables" / "files.parquet" if NAMES else [],
        names=NAMES if NAMES and Path(NAMES).is_file() else [],
    output:
        RESULTS / "tables" / "people.parquet",
        names_out=RESULTS / "people" / people.NAMES_FILE,
    log:
        log_file("people", "people"),
    benchmark:
        benchmark_file("people", "people")
    params:
        settings=config["people"],
        version=tables.VERSIONS["people"],
        ids=RESULTS / "people" / people.IDS_FILE,
        names_out=lambda wildcards, output: output.names_out,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/people.py"
