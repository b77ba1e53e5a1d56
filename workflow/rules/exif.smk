rule exif:
    input:
        files=part("files"),
    output:
        part("exif"),
    log:
        log_file("exif"),
    benchmark:
        benchmark_file("exif")
    params:
        version=tables.VERSIONS["exif"],
    threads: 2
    resources:
        mem_mb=1000,
        runtime=shard_runtime(0.05),
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/exif.py"
