rule places:
    input:
        files=part("files"),
        exif=part("exif"),
    output:
        part=part("places"),
    log:
        log_file("places"),
    benchmark:
        benchmark_file("places")
    params:
        settings=config["places"],
        version=tables.VERSIONS["places"],
        # Another release of the wheel's gazetteer may name other places: their rows are made again.
        gazetteer=places.GAZETTEER,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=shard_runtime(0.001),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/places.py"
