# People are clustered across the whole archive, so this step reads the consolidated tables, not parts.
rule people:
    input:
        faces=RESULTS / "tables" / "faces.parquet",
        face_embeddings=RESULTS / "tables" / "face_embeddings.parquet",
    output:
        RESULTS / "tables" / "people.parquet",
    log:
        log_file("people", "people"),
    benchmark:
        benchmark_file("people", "people")
    params:
        settings=config["people"],
        version=tables.VERSIONS["people"],
        ids=RESULTS / "people" / people.IDS_FILE,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/people.py"
