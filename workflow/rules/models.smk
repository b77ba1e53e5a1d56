# Models are fetched here, before the jobs that need them start, and on the machine that runs Snakemake
# (a localrule): cluster nodes without internet then read the shared cache. The record names the file and
# its sha256; the model's sha256 is also a param of every rule that uses it, so a new model reruns exactly
# the steps that use it.
localrules:
    models,


rule models:
    output:
        RESULTS / "models" / "{model}.json",
    log:
        log_file("models", "{model}"),
    params:
        sha256=lambda wildcards: model_sha256(wildcards.model),
        overrides=lambda wildcards: model_overrides(wildcards.model),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/models.py"


# A missing model is the one failure a new user meets first (no internet, or a cluster node); its message
# says where to put the file, so repeat it at the end of the output instead of leaving it scrolled away.
onerror:
    for model_log in sorted((RESULTS / "logs" / "models").glob("*.log")):
        text = model_log.read_text(errors="replace")
        if " ERROR " in text:
            message = text.split(" ERROR ", 1)[1].split(": ", 1)[1]
            print(f"\n{message}", file=sys.stderr)
