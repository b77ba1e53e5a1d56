rule files:
    input:
        shard_list=INVENTORY / "{shard}.jsonl",
    output:
        part("files"),
    log:
        log_file("files"),
    benchmark:
        benchmark_file("files")
    params:
        version=tables.VERSIONS["files"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=shard_runtime(0.01),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/files.py"
