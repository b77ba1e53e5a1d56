rule faces:
    input:
        files=part("files"),
        thumbnails=part("thumbnails"),
        model=model_record("faces"),
    output:
        part=part("faces"),
        crops=directory(RESULTS / "faces" / "{shard}"),
    log:
        log_file("faces"),
    benchmark:
        benchmark_file("faces")
    params:
        settings=config["faces"],
        version=tables.VERSIONS["faces"],
        model_sha256=model_sha256(config["faces"]["model"]),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.2),
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/faces.py"
