# Events are found on the archive's whole timeline, so this step reads the consolidated tables, not parts. The
# places step's table (its place names) is read when that step runs; events are found without it.
rule events:
    input:
        files=RESULTS / "tables" / "files.parquet",
        exif=RESULTS / "tables" / "exif.parquet",
        places=RESULTS / "tables" / "places.parquet" if config["places"]["enabled"] else [],
    output:
        RESULTS / "tables" / "events.parquet",
    log:
        log_file("events", "events"),
    benchmark:
        benchmark_file("events", "events")
    params:
        settings=config["events"],
        version=tables.VERSIONS["events"],
        ids=RESULTS / "events" / events.IDS_FILE,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/events.py"
