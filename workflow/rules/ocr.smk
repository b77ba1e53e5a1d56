rule ocr:
    input:
        files=part("files"),
        thumbnails=part("thumbnails"),
        model=model_record("ocr"),
    output:
        part=part("ocr"),
    log:
        log_file("ocr"),
    benchmark:
        benchmark_file("ocr")
    params:
        settings=config["ocr"],
        version=tables.VERSIONS["ocr"],
        model_sha256=model_sha256(config["ocr"]["model"]),
    threads: 2
    resources:
        mem_mb=2000,
        runtime=shard_runtime(1.0),
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/ocr.py"
