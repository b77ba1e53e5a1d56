"""Pages for Snakemake's report (``snakemake --report report.html``): the archive at a glance.

Each page is one self-contained file (images inlined as data URIs) because Snakemake's HTML report embeds
every result as a single data URI and shows HTML results in an iframe, where relative links would break.
The ``report`` rule marks them with ``report()``; this module only turns tables into pages.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import tables
from ..data.config import schema_defaults
from ..media.fileio import atomic_path, write_bytes_atomic
from .common import StepSettings

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

PAGES = (
    "overview.svg", "gallery.html", "people.html", "duplicates.html", "errors.html", "blurry.html",
    "badly_exposed.html",
)  # fmt: skip

# The columns each page reads, by table; every table's path, status and error go to the errors page. A table
# not listed gives only those three: the report never loads an embedding, which at a million files would be
# gigabytes of arrays for pages that show none (dino alone is 1.5 KB a row).
READS: dict[str, tuple[str, ...] | None] = {
    "files": ("media_id", "input", "relpath", "kind", "format"),
    "exif": ("make", "model", "datetime_original"),
    "thumbnails": ("media_id", "role", "file"),
    "faces": ("media_id", "frame_index", "face_index", "crop"),
    "duplicates": ("group_id", "representative", "media_id", "kind"),
    "quality": ("media_id", "sharpness", "mean_luma", "shadows_clipped", "highlights_clipped"),
    "people": None,  # every column: one row per person
}
ERROR_COLUMNS = ("path", "status", "error")


def columns(step: str) -> list[str] | None:
    """The columns of ``step``'s table that :func:`write_pages` reads (None: all of them)."""
    if step in READS and READS[step] is None:
        return None
    names = tables.SCHEMAS[step].names
    return [c for c in names if c in ERROR_COLUMNS or c in (READS.get(step) or ())]


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 15px; margin: 18px 0 6px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 160px; } figure img { width: 160px; height: 160px; object-fit: cover; border-radius: 4px; }
figcaption { font-size: 11px; color: #555; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.row { display: flex; gap: 6px; align-items: center; margin-bottom: 10px; }
.row img { width: 80px; height: 80px; border-radius: 4px; }
.label { width: 150px; flex: none; font-weight: 600; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
.none { color: #777; }
.problems { color: #a00; margin-bottom: 12px; }
"""


@dataclass(frozen=True)
@schema_defaults("report")
class Settings(StepSettings):
    gallery_size: int
    faces_per_person: int
    people: int
    duplicate_groups: int
    errors: int
    blurry: int
    blurry_below: float
    badly_exposed: int
    dark_below: float
    bright_above: float
    clipped_above: float


def data_uri(path: str | os.PathLike[str]) -> str:
    mime = mimetypes.guess_type(os.fspath(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def _img(path: str | None, alt: str) -> str:
    if not path or not os.path.isfile(path):
        return f'<span class="none">{html.escape(alt)}: no picture</span>'
    return f'<img src="{data_uri(path)}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _figure(path: str | None, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _more(shown: int, total: int, what: str) -> str:
    return f'<p class="none">{shown} of {total} {what} shown.</p>' if total > shown else ""


def thumbs_by_media(thumbnails: pd.DataFrame) -> dict[str, str]:
    """The 256-px thumbnail of each file (videos: of their poster frame)."""
    ok = thumbnails[(thumbnails.status == "ok") & (thumbnails.role == "thumb")]
    return dict(zip(ok.media_id.astype(str), ok.file.astype(str), strict=True))


def gallery_page(files: pd.DataFrame, thumbs: Mapping[str, str], settings: Settings) -> str:
    """Thumbnails of the photos and videos in archive order (input, then path), the first ``gallery_size``."""
    media = files[(files.status == "ok") & files.kind.isin(["image", "video"])].sort_values(["input", "relpath"])
    shown = media.head(settings.gallery_size)
    cells = [_figure(thumbs.get(m), str(r)) for m, r in zip(shown.media_id, shown.relpath, strict=True)]
    body = f'<div class="grid">{"".join(cells)}</div>' + _more(len(shown), len(media), "photos and videos")
    return page(f"Gallery: {len(media)} photos and videos", body)


def people_page(
    people: pd.DataFrame, faces: pd.DataFrame, settings: Settings, name_problems: Sequence[str] = ()
) -> str:
    """One row per person, largest first: their face crops, the representative's first; above them, what was
    wrong with the names file (``people.names``)."""
    crops = {
        (str(m), int(f), int(i)): str(c)
        for m, f, i, c in zip(faces.media_id, faces.frame_index, faces.face_index, faces.crop, strict=True)
        if isinstance(c, str)
    }
    rows = []
    for person in people.head(settings.people).itertuples():
        keys = [(f["media_id"], f["frame_index"], f["face_index"]) for f in person.faces]
        first = (person.media_id, person.frame_index, person.face_index)
        keys = [first, *(k for k in keys if k != first)][: settings.faces_per_person]
        pictures = "".join(_img(crops.get(k), f"person {person.person_id}") for k in keys)
        who = f"{html.escape(person.name)} (person {person.person_id})" if isinstance(person.name, str) else ""
        label = f"{who or f'Person {person.person_id}'}<br><small>{person.size} faces in {person.photos} files</small>"
        rows.append(f'<div class="row"><div class="label">{label}</div>{pictures}</div>')
    if not rows:
        rows.append('<p class="none">No people: no face was seen often enough (people.min_faces).</p>')
    if name_problems:
        listed = "".join(f"<li>{html.escape(p)}</li>" for p in name_problems)
        rows.insert(0, f'<div class="problems">Problems with the names file:<ul>{listed}</ul></div>')
    return page(
        f"People: {len(people)}", "".join(rows) + _more(min(len(people), settings.people), len(people), "people")
    )


def duplicates_page(
    duplicates: pd.DataFrame, files: pd.DataFrame, thumbs: Mapping[str, str], settings: Settings
) -> str:
    """Each group side by side, the representative first, largest groups first."""
    relpath = dict(zip(files.media_id.astype(str), files.relpath.astype(str), strict=True))
    groups = sorted(duplicates.groupby("group_id"), key=lambda g: (-len(g[1]), g[0]))
    rows = []
    for group_id, members in groups[: settings.duplicate_groups]:
        rep = str(members.representative.iloc[0])
        ordered = [rep, *sorted(str(m) for m in members.media_id if str(m) != rep)]
        label = f"{html.escape(str(members.kind.iloc[0]))} #{group_id}<br><small>{len(members)} files</small>"
        cells = "".join(_figure(thumbs.get(m), relpath.get(m, m)) for m in ordered)
        rows.append(f'<div class="row"><div class="label">{label}</div>{cells}</div>')
    if not rows:
        rows.append('<p class="none">No duplicates.</p>')
    return page(
        f"Duplicates: {len(groups)} groups",
        "".join(rows) + _more(min(len(groups), settings.duplicate_groups), len(groups), "groups"),
    )


def errors_page(
    tables: Iterable[tuple[str, pd.DataFrame]], settings: Settings, more: Sequence[tuple[str, str, str]] = ()
) -> str:
    """Every error row of every table, then ``more`` errors: step, file, message."""
    rows: list[tuple[str, str, str]] = []
    for step, df in tables:
        bad = df[df.status == "error"]
        rows += [(step, str(p), str(e)) for p, e in zip(bad.path, bad.error, strict=True)]
    rows += more
    cells = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(p)}</td><td>{html.escape(e)}</td></tr>"
        for s, p, e in rows[: settings.errors]
    )
    body = (
        f"<table><tr><th>step</th><th>file</th><th>error</th></tr>{cells}</table>"
        if rows
        else '<p class="none">No errors.</p>'
    )
    return page(f"Errors: {len(rows)}", body + _more(min(len(rows), settings.errors), len(rows), "errors"))


def _listed(
    quality: pd.DataFrame, files: pd.DataFrame, flagged: pd.Series, order: str, ascending: bool
) -> pd.DataFrame:
    """The files every one of whose preview frames is ``flagged``: their frame worst by ``order`` (lowest when
    ``ascending``), worst first, with the file's relpath; a video with one good frame is not listed."""
    ok = quality[quality.status == "ok"].assign(flagged=flagged)
    every = ok.groupby("media_id", observed=True).flagged.transform("all")
    worst = ok[every].sort_values([order, "path"], ascending=[ascending, True]).drop_duplicates("media_id")
    relpath = files[["media_id", "relpath"]].astype({"media_id": str})
    return worst.astype({"media_id": str}).merge(relpath, on="media_id", how="left")


def blurry_page(quality: pd.DataFrame, files: pd.DataFrame, thumbs: Mapping[str, str], settings: Settings) -> str:
    """Files whose every preview frame has a sharpness under ``blurry_below``, the blurriest first."""
    listed = _listed(quality, files, quality.sharpness < settings.blurry_below, "sharpness", ascending=True)
    shown = listed.head(settings.blurry)
    cells = [
        _figure(thumbs.get(m), f"{r} · sharpness {s:.0f}")
        for m, r, s in zip(shown.media_id, shown.relpath, shown.sharpness, strict=True)
    ]
    body = (
        f"<p>Sharpness (variance of the Laplacian at 512 px) under {settings.blurry_below:g} on every preview "
        f'frame.</p><div class="grid">{"".join(cells)}</div>'
        if cells
        else f'<p class="none">No file is blurry (sharpness under {settings.blurry_below:g}).</p>'
    )
    return page(f"Blurry: {len(listed)}", body + _more(len(shown), len(listed), "blurry files"))


def exposure_problem(row: Mapping[str, float], settings: Settings) -> str:
    """Why a frame counts as badly exposed ("" when it does not), in words for the page."""
    problems = []
    if row["mean_luma"] < settings.dark_below:
        problems.append(f"dark (mean luma {row['mean_luma']:.2f})")
    if row["mean_luma"] > settings.bright_above:
        problems.append(f"bright (mean luma {row['mean_luma']:.2f})")
    if row["shadows_clipped"] > settings.clipped_above:
        problems.append(f"{row['shadows_clipped']:.0%} black")
    if row["highlights_clipped"] > settings.clipped_above:
        problems.append(f"{row['highlights_clipped']:.0%} white")
    return ", ".join(problems)


def badly_exposed_page(
    quality: pd.DataFrame, files: pd.DataFrame, thumbs: Mapping[str, str], settings: Settings
) -> str:
    """Files whose every preview frame is too dark, too bright or clipped over ``clipped_above``; the frame
    farthest from mid-grey first."""
    flagged = (
        (quality.mean_luma < settings.dark_below)
        | (quality.mean_luma > settings.bright_above)
        | (quality.shadows_clipped > settings.clipped_above)
        | (quality.highlights_clipped > settings.clipped_above)
    )
    off_grey = quality.assign(off_grey=(quality.mean_luma - 0.5).abs())
    listed = _listed(off_grey, files, flagged, "off_grey", ascending=False)
    shown = listed.head(settings.badly_exposed)
    cells = [
        _figure(thumbs.get(str(r["media_id"])), f"{r['relpath']} · {exposure_problem(r, settings)}")
        for r in shown.to_dict("records")
    ]
    rule = (
        f"mean luma under {settings.dark_below:g} or over {settings.bright_above:g}, or over "
        f"{settings.clipped_above:.0%} of the pixels clipped black or white"
    )
    body = (
        f'<p>On every preview frame: {rule}.</p><div class="grid">{"".join(cells)}</div>'
        if cells
        else f'<p class="none">No file is badly exposed ({rule}).</p>'
    )
    return page(f"Badly exposed: {len(listed)}", body + _more(len(shown), len(listed), "badly exposed files"))


def overview_figure(files: pd.DataFrame, exif: pd.DataFrame | None, target: str | os.PathLike[str]) -> None:
    """Bar charts of the archive: files per kind, per format, per camera and per year taken."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ok = files[files.status == "ok"]
    panels: list[tuple[str, pd.Series]] = [
        ("Files per kind", ok.kind.astype(str).value_counts()),
        ("Files per format", ok.format.astype(str).value_counts().head(12)),
    ]
    if exif is not None:
        shot = exif[exif.status == "ok"]
        cameras = [camera(m, n) for m, n in zip(shot.make, shot.model, strict=True)]
        panels.append(("Photos per camera", pd.Series([c for c in cameras if c]).value_counts().head(12)))
        years = shot.datetime_original.dropna().dt.year.astype(int)
        panels.append(("Photos per year taken", years.value_counts().sort_index()))
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 3.4 * rows), layout="constrained", squeeze=False)
    for ax, (title, counts) in zip(axes.flat, panels, strict=False):
        _bars(ax, title, counts)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="svg")
    plt.close(fig)


def camera(make: object, model: object) -> str:
    """ "Canon EOS 5D Mark IV", not "Canon Canon EOS 5D Mark IV": most models already start with the make."""
    make = str(make).strip() if isinstance(make, str) else ""
    model = str(model).strip() if isinstance(model, str) else ""
    if make and model.lower().startswith(make.split()[0].lower()):
        return model
    return f"{make} {model}".strip()


def _bars(ax: Axes, title: str, counts: pd.Series) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    if counts.empty:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    labels: Sequence[str] = [str(i) for i in counts.index]
    ax.barh(labels[::-1], counts.to_numpy()[::-1], color="#4c72b0")
    ax.bar_label(ax.containers[0], padding=2)
    ax.margins(x=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def write_pages(
    loaded: Mapping[str, pd.DataFrame],
    targets: Mapping[str, str],
    settings: Settings,
    name_problems: Sequence[str] = (),
) -> None:
    """Every page of :data:`PAGES` from the consolidated tables in ``loaded`` (by step; the steps that are
    off are missing), to ``targets`` (by page name without suffix). ``name_problems``: what the people step
    found wrong in the names file, shown on the people and errors pages."""
    files = loaded["files"]
    thumbs = thumbs_by_media(loaded["thumbnails"]) if "thumbnails" in loaded else {}
    overview_figure(files, loaded.get("exif"), targets["overview"])
    off = "<p>The {} step is not enabled.</p>"
    pages = {
        "gallery": gallery_page(files, thumbs, settings),
        "people": people_page(loaded["people"], loaded["faces"], settings, name_problems)
        if "people" in loaded
        else page("People", off.format("people")),
        "duplicates": duplicates_page(loaded["duplicates"], files, thumbs, settings)
        if "duplicates" in loaded
        else page("Duplicates", off.format("duplicates")),
        "errors": errors_page(
            ((step, df) for step, df in loaded.items() if "status" in df),
            settings,
            [("people", "people.names", p) for p in name_problems],
        ),
        "blurry": blurry_page(loaded["quality"], files, thumbs, settings)
        if "quality" in loaded
        else page("Blurry", off.format("quality")),
        "badly_exposed": badly_exposed_page(loaded["quality"], files, thumbs, settings)
        if "quality" in loaded
        else page("Badly exposed", off.format("quality")),
    }
    for name, text in pages.items():
        write_bytes_atomic(targets[name], text.encode())
