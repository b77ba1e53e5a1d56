rule quality:
    input:
        files=part("files"),
        thumbnails=part("thumbnails"),
    output:
        part=part("quality"),
    log:
        log_file("quality"),
    benchmark:
        benchmark_file("quality")
    params:
        settings=config["quality"],
        version=tables.VERSIONS["quality"],
    threads: 1
    resources:
        mem_mb=500,
        runtime=shard_runtime(0.1),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/quality.py"
