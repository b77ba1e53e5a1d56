# A separate rule from detection, so that a new embedding model reruns only this step.
rule face_embeddings:
    input:
        faces=part("faces"),
        model=model_record("face_embeddings"),
    output:
        part("face_embeddings"),
    log:
        log_file("face_embeddings"),
    benchmark:
        benchmark_file("face_embeddings")
    params:
        settings=config["face_embeddings"],
        version=tables.VERSIONS["face_embeddings"],
        model_sha256=model_sha256(config["face_embeddings"]["model"]),
        model_runtime=model_runtime(config["face_embeddings"]["model"]),
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.05),
    conda:
        "../../envs/ml.yaml"
    script:
        "../scripts/face_embeddings.py"
