rule dino:
    input:
        thumbnails=part("thumbnails"),
        model=model_record("dino"),
    output:
        part("dino"),
    log:
        log_file("dino"),
    benchmark:
        benchmark_file("dino")
    params:
        settings=config["dino"],
        version=tables.VERSIONS["dino"],
        model_sha256=model_sha256(config["dino"]["model"]),
        model_runtime=model_runtime(config["dino"]["model"]),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.2),
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/dino.py"
