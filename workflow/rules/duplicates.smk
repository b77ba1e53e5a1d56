# Duplicates are found across the whole archive, so this step reads the consolidated tables, not parts.
rule duplicates:
    input:
        files=RESULTS / "tables" / "files.parquet",
        hashes=RESULTS / "tables" / "hashes.parquet",
        dino=RESULTS / "tables" / "dino.parquet" if config["dino"]["enabled"] else [],
    output:
        RESULTS / "tables" / "duplicates.parquet",
    log:
        log_file("duplicates", "duplicates"),
    benchmark:
        benchmark_file("duplicates", "duplicates")
    params:
        settings=config["duplicates"],
        version=tables.VERSIONS["duplicates"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/duplicates.py"
