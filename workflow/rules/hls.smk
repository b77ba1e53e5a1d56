rule hls:
    input:
        files=part("files"),
    output:
        part=part("hls"),
        renditions=directory(RESULTS / "hls" / "{shard}"),
    log:
        log_file("hls"),
    benchmark:
        benchmark_file("hls")
    params:
        settings=config["hls"],
        version=tables.VERSIONS["hls"],
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(5),
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/hls.py"
