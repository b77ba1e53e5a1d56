# The perceptual hash of a video describes its poster frame, which the thumbnails step picks, so hashes
# reads the thumbnails part when that step is enabled.
rule hashes:
    input:
        files=part("files"),
        thumbnails=part("thumbnails") if config["thumbnails"]["enabled"] else [],
    output:
        part("hashes"),
    log:
        log_file("hashes"),
    benchmark:
        benchmark_file("hashes")
    params:
        settings=config["hashes"],
        version=tables.VERSIONS["hashes"],
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.5),
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/hashes.py"
