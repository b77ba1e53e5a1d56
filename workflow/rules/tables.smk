localrules:
    tables,


rule tables:
    input:
        lambda wildcards: [part(wildcards.step, shard) for shard in SHARDS],
    output:
        directory(RESULTS / "tables" / "{step}.parquet"),
    log:
        log_file("tables", "{step}"),
    benchmark:
        benchmark_file("tables", "{step}")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/tables.py"
