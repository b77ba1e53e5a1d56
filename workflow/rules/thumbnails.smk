rule thumbnails:
    input:
        files=part("files"),
    output:
        part=part("thumbnails"),
        images=directory(RESULTS / "thumbnails" / "{shard}"),
    log:
        log_file("thumbnails"),
    benchmark:
        benchmark_file("thumbnails")
    params:
        settings=config["thumbnails"],
        version=tables.VERSIONS["thumbnails"],
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.5),
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/thumbnails.py"
