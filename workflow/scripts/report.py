from cl_ml_tools import report, steps, tables
from cl_ml_tools.fileio import write_bytes_atomic

steps.log_to(snakemake.log[0])
settings = report.Settings.from_config(snakemake.params.settings)
results = snakemake.params.results
loaded = {step: tables.load(step, results) for step, _ in snakemake.input.items()}
files = loaded["files"]
thumbs = report.thumbs_by_media(loaded["thumbnails"]) if "thumbnails" in loaded else {}
report.overview_figure(files, loaded.get("exif"), snakemake.output.overview)
pages = {
    "gallery": report.gallery_page(files, thumbs, settings),
    "people": report.people_page(loaded["people"], loaded["faces"], settings)
    if "people" in loaded
    else report.page("People", "<p>The people step is not enabled.</p>"),
    "duplicates": report.duplicates_page(loaded["duplicates"], files, thumbs, settings)
    if "duplicates" in loaded
    else report.page("Duplicates", "<p>The duplicates step is not enabled.</p>"),
    "errors": report.errors_page(((s, df) for s, df in loaded.items() if "status" in df), settings),
}
for name, html in pages.items():
    write_bytes_atomic(snakemake.output[name], html.encode())
