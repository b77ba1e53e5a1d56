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
        # The definition of the table's columns: raised whenever a value would change, so that Snakemake's
        # params rerun trigger recomputes tables written before instead of mixing two definitions.
        # 2: pixel_sha512 over the canonical colours; pHash with SciPy's DCT; perceptual hashes from the
        # full decode whatever hashes.pixel says.
        version=2,
    threads: 2
    resources:
        mem_mb=3000,
        runtime=shard_runtime(0.5),
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/hashes.py"
