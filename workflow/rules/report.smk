# Pages for `snakemake --report report.html`: made from the consolidated tables, so the report shows the
# whole archive. Captions and the report's front page are under workflow/report/.
report: "../report/workflow.rst"


# A second of pandas and matplotlib over the consolidated tables: on a cluster it runs where Snakemake runs.
localrules:
    report,


rule report:
    input:
        **{step: RESULTS / "tables" / f"{step}.parquet" for step in ENABLED},
        people_names=RESULTS / "people" / people.NAMES_FILE if "people" in ENABLED else [],
    output:
        overview=report(
            RESULTS / "report" / "overview.svg", caption="../report/overview.rst", category="1. Archive"
        ),
        gallery=report(
            RESULTS / "report" / "gallery.html", caption="../report/gallery.rst", category="2. Gallery"
        ),
        people=report(RESULTS / "report" / "people.html", caption="../report/people.rst", category="3. People"),
        duplicates=report(
            RESULTS / "report" / "duplicates.html", caption="../report/duplicates.rst", category="4. Duplicates"
        ),
        errors=report(RESULTS / "report" / "errors.html", caption="../report/errors.rst", category="5. Errors"),
        blurry=report(RESULTS / "report" / "blurry.html", caption="../report/blurry.rst", category="6. Blurry"),
        badly_exposed=report(
            RESULTS / "report" / "badly_exposed.html",
            caption="../report/badly_exposed.rst",
            category="7. Badly exposed",
        ),
    log:
        log_file("report", "report"),
    benchmark:
        benchmark_file("report", "report")
    params:
        settings=config["report"],
        results=RESULTS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/report.py"
