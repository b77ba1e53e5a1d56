rule clip:
    input:
        thumbnails=part("thumbnails"),
        model=model_record("clip"),
    output:
        part("clip"),
    log:
        log_file("clip"),
    benchmark:
        benchmark_file("clip")
    params:
        settings=config["clip"],
        version=tables.VERSIONS["clip"],
        model_sha256=model_sha256(config["clip"]["model"]),
        model_runtime=model_runtime(config["clip"]["model"]),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.2),
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/clip.py"
