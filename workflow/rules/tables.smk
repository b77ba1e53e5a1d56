localrules:
    tables,


# Linking a step's parts into its table is a few system calls: it runs in Snakemake's own process (`run:`,
# with the workflow profile's `force-use-threads`), not in an interpreter of its own, which cost a rerun
# 0.3 CPU-s per table (docs/performance.md, "Reruns inside a shard"). No benchmark record: in Snakemake's
# process it would measure Snakemake and every job running beside it.
rule tables:
    input:
        lambda wildcards: [part(wildcards.step, shard) for shard in SHARDS],
    output:
        directory(RESULTS / "tables" / "{step}.parquet"),
    log:
        log_file("tables", "{step}"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    run:
        consolidate(wildcards.step, input, output[0], log[0])
