"""Table schemas, per-shard parts, consolidation and loading.

Every step writes ``results/parts/<step>/<shard>.parquet`` with the step's fixed Arrow schema (so a shard
of nothing but errors still has the right columns). A step's table, ``results/tables/<step>.parquet``, is a
Parquet *dataset*: a directory holding one hard link per part, named by shard. ``pandas.read_parquet``,
``pyarrow.parquet.read_table`` and :func:`load` read it like a single file, in shard order. Consolidating
after one shard changed therefore relinks files instead of rewriting the table: concatenating a million rows
of DINOv2 embeddings into one file took 35 s and 2 GB of writes, linking 1000 parts takes a fraction of a
second (docs/performance.md).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..media.fileio import atomic_path, displayable
from ..models.registry import step_embedding_size

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_SKIPPED = "skipped"

COMMON = [
    pa.field("media_id", pa.string(), nullable=False),
    pa.field("input", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
]

HLS_VARIANT = pa.struct(
    [
        ("name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bandwidth", pa.int64()),
        ("average_bandwidth", pa.int64()),
        ("codecs", pa.string()),
        ("playlist", pa.string()),
        ("segments", pa.int32()),
    ]
)

FACE_KEY = [pa.field("frame_index", pa.int32()), pa.field("face_index", pa.int32())]
FACE = pa.struct([("media_id", pa.string()), ("frame_index", pa.int32()), ("face_index", pa.int32())])
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
"""BlazeFace's keypoints in MediaPipe's order. "Right" is the person's right, on the left of the picture."""
EMBEDDING_DIM = {step: step_embedding_size(step) for step in ("face_embeddings", "dino", "clip")}
"""Each embedding table's width, from the registry entries of the models its step may use."""


def _image_embeddings(step: str) -> pa.Schema:
    return pa.schema(
        [
            *COMMON,
            pa.field("frame_index", pa.int32()),
            pa.field("timestamp_s", pa.float64()),
            pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM[step])),
            pa.field("model", pa.string()),
        ]
    )


# The quality table's measures of a preview frame (steps/quality.py), each a float32 column.
QUALITY_MEASURES = (
    "sharpness", "mean_luma", "shadows_clipped", "highlights_clipped", "contrast", "noise", "colourfulness",
)  # fmt: skip
SCHEMAS: dict[str, pa.Schema] = {
    "files": pa.schema(
        [
            *COMMON,
            pa.field("relpath", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.timestamp("ns", tz="UTC")),
            pa.field("kind", pa.string()),
            pa.field("format", pa.string()),
            pa.field("sha256", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("raw_path", pa.binary()),
        ]
    ),
    "hashes": pa.schema(
        [
            *COMMON,
            pa.field("sha512", pa.string()),
            pa.field("md5", pa.string()),
            pa.field("pixel_sha512", pa.string()),
            pa.field("video_sha512", pa.string()),
            pa.field("video_keyframes", pa.int32()),
            pa.field("phash", pa.uint64()),
            pa.field("dhash", pa.uint64()),
        ]
    ),
    "exif": pa.schema(
        [
            *COMMON,
            pa.field("make", pa.string()),
            pa.field("model", pa.string()),
            pa.field("lens", pa.string()),
            pa.field("datetime_original", pa.timestamp("us")),
            pa.field("datetime_original_offset", pa.string()),
            pa.field("create_date", pa.timestamp("us")),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("orientation", pa.int16()),
            pa.field("iso", pa.int32()),
            pa.field("f_number", pa.float64()),
            pa.field("exposure_time", pa.float64()),
            pa.field("focal_length", pa.float64()),
            pa.field("gps_latitude", pa.float64()),
            pa.field("gps_longitude", pa.float64()),
            pa.field("gps_altitude", pa.float64()),
            pa.field("gps_datetime", pa.timestamp("us", tz="UTC")),
            pa.field("software", pa.string()),
            pa.field("duration", pa.float64()),
            pa.field("mime", pa.string()),
            pa.field("raw", pa.string()),
        ]
    ),
    "thumbnails": pa.schema(
        [
            *COMMON,
            pa.field("role", pa.string()),
            pa.field("frame_index", pa.int32()),
            pa.field("timestamp_s", pa.float64()),
            pa.field("file", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("source_width", pa.int32()),
            pa.field("source_height", pa.int32()),
        ]
    ),
    "hls": pa.schema(
        [
            *COMMON,
            pa.field("master", pa.string()),
            pa.field("variants", pa.list_(HLS_VARIANT)),
            pa.field("duration_s", pa.float64()),
            pa.field("segment_count", pa.int32()),
        ]
    ),
    "faces": pa.schema(
        [
            *COMMON,
            *FACE_KEY,
            pa.field("timestamp_s", pa.float64()),
            pa.field("score", pa.float32()),
            *(pa.field(name, pa.float32()) for name in ("x", "y", "width", "height")),
            *(pa.field(name, pa.float32()) for name in ("x_norm", "y_norm", "width_norm", "height_norm")),
            *(pa.field(f"{point}_{axis}", pa.float32()) for point in KEYPOINTS for axis in "xy"),
            pa.field("sharpness", pa.float32()),
            pa.field("frontalness", pa.float32()),
            pa.field("quality", pa.float32()),
            pa.field("crop", pa.string()),
            pa.field("crop_source", pa.string()),
        ]
    ),
    # One row per text line of a preview frame; a file whose frames hold no text at all: one row with status ok
    # and null frame_index, line_index and text (read, nothing found), so that no text is not a missing file.
    "ocr": pa.schema(
        [
            *COMMON,
            pa.field("frame_index", pa.int32()),
            pa.field("timestamp_s", pa.float64()),
            pa.field("line_index", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("score", pa.float32()),
            *(pa.field(name, pa.float32()) for name in ("x", "y", "width", "height")),
            *(pa.field(name, pa.float32()) for name in ("x_norm", "y_norm", "width_norm", "height_norm")),
            pa.field("model", pa.string()),
        ]
    ),
    "places": pa.schema(
        [
            *COMMON,
            pa.field("latitude", pa.float64()),
            pa.field("longitude", pa.float64()),
            pa.field("gps", pa.string()),
            pa.field("country_code", pa.string()),
            pa.field("country", pa.string()),
            pa.field("region", pa.string()),
            pa.field("place", pa.string()),
            pa.field("distance_km", pa.float64()),
            pa.field("gazetteer", pa.string()),
        ]
    ),
    # One row per preview frame, at the working scale (steps/quality.py); docs/tables.md defines each measure.
    "quality": pa.schema(
        [
            *COMMON,
            pa.field("frame_index", pa.int32()),
            pa.field("timestamp_s", pa.float64()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            *(pa.field(name, pa.float32()) for name in QUALITY_MEASURES),
        ]
    ),
    "face_embeddings": pa.schema(
        [
            *COMMON,
            *FACE_KEY,
            pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_DIM["face_embeddings"])),
            pa.field("model", pa.string()),
        ]
    ),
    "dino": _image_embeddings("dino"),
    "clip": _image_embeddings("clip"),
    "duplicates": pa.schema(
        [
            *COMMON,
            pa.field("group_id", pa.int64()),
            pa.field("kind", pa.string()),
            pa.field("group_size", pa.int32()),
            pa.field("representative", pa.string()),
            pa.field("phash_distance", pa.int32()),
            pa.field("cosine", pa.float32()),
        ]
    ),
    # One row per person; the representative face is named by the key columns, its file and its crop.
    "people": pa.schema(
        [
            pa.field("person_id", pa.int64(), nullable=False),
            pa.field("name", pa.string()),
            pa.field("size", pa.int32()),
            pa.field("photos", pa.int32()),
            pa.field("faces", pa.list_(FACE)),
            pa.field("media_id", pa.string()),
            *FACE_KEY,
            pa.field("path", pa.string()),
            pa.field("crop", pa.string()),
            pa.field("quality", pa.float32()),
        ]
    ),
    # One row per event; the representative file is named by media_id and path.
    "events": pa.schema(
        [
            pa.field("event_id", pa.int64(), nullable=False),
            pa.field("start", pa.timestamp("us", tz="UTC")),
            pa.field("end", pa.timestamp("us", tz="UTC")),
            pa.field("size", pa.int32()),
            pa.field("media_ids", pa.list_(pa.string())),
            pa.field("undated", pa.int32()),
            pa.field("located", pa.int32()),
            pa.field("latitude", pa.float64()),
            pa.field("longitude", pa.float64()),
            pa.field("place", pa.string()),
            pa.field("country", pa.string()),
            pa.field("media_id", pa.string()),
            pa.field("path", pa.string()),
        ]
    ),
}

TABLES = tuple(SCHEMAS)
# What each table's values mean, numbered: raised whenever a column's values change for the same input and
# settings, so that a rerun recomputes every part (each rule passes it as a param, one of Snakemake's rerun
# triggers) and a table never mixes parts of two meanings (each part records it; ``consolidate`` checks it).
# Parts written before versions were recorded count as version 1.
VERSIONS: dict[str, int] = {name: 1 for name in TABLES} | {
    "files": 2,  # sha256 of the bytes (issue 26: what a moved file's rows are found by)
    # 2: pixel_sha512 over canonical colours; video_sha512 over the demuxer's keyframe payloads; pHash with
    # SciPy's DCT, and both perceptual hashes from the full decode whatever hashes.pixel says (issue 19).
    # 3: a TIFF with an Orientation tag other than 1 (Pillow's reader turned it upright, then ours did again);
    # a PNG with a damaged ancillary chunk is decoded without it instead of being an error; video_sha512 and
    # video_keyframes of the main video stream, not the first (a still ahead of the film)
    # 4: phash and dhash of photos that name Adobe RGB in EXIF (DCF) without a profile, converted to sRGB
    "hashes": 4,
    # 2: an f_number or exposure_time of 0 is unknown (null), as in exiftool; 3: the duration of Matroska and
    # WebM files (a clock string there) is no longer null; 4: the gps_datetime column
    "exif": 4,
    "faces": 2,  # sharpness is the unclipped Laplacian variance; crops aligned as InsightFace's norm_crop
    "face_embeddings": 2,  # embeddings of those crops
    # 3: BANDWIDTH is the measured peak segment bit rate, AVERAGE-BANDWIDTH added; x264's slice threads (the same
    # bytes on every run). 4: non-square pixels encoded square at the display aspect ratio; the main video
    # stream, not the first (a still ahead of the film); the last frame held while the audio runs on (segments
    # of the target duration, EXTINF their length). 5: HDR (PQ, HLG) tone-mapped to SDR BT.709; an untagged
    # Y'CbCr matrix named in the renditions as players assume it (BT.709 at HD sizes, else BT.601); interlaced
    # video deinterlaced
    "hls": 5,
    # 2: videos: non-square pixels shown at the display aspect ratio (source_width is the displayed width); the
    # main video stream, not the first (a still ahead of the film); each preview the frame on screen at its time.
    # TIFFs with an Orientation tag turned upright once; PNGs with a damaged ancillary chunk decoded.
    # 3: HDR video (PQ, HLG) tone-mapped to SDR BT.709; HD video without a named Y'CbCr matrix read as BT.709;
    # interlaced video deinterlaced; photos that name Adobe RGB in EXIF without a profile converted to sRGB
    "thumbnails": 3,
    "dino": 2,  # a preview decoded at reduced JPEG scale is resized with the full decode's geometry
    "clip": 2,  # the same
    "people": 2,  # the name column: persons named by people.names
    # a cheap first pass skips previews without a line-shaped box; tight crops the detector misses read whole
    "ocr": 2,
    # 2: a video without a taken date is timed by its create_date (UTC), not its mtime; a photo without an
    # offset but with a GPS time takes the offset between the two
    "events": 2,
}
VERSION_KEY = b"cl_ml_tools.version"
# Columns with a handful of distinct values: pandas categories (less memory, faster groupby, and their
# values listed by ``.cat.categories``).
CATEGORIES = ("input", "status", "kind", "format", "role", "make", "model", "lens", "mime", "crop_source", "gps")


def base_row(file_row: Mapping[str, Any]) -> dict[str, Any]:
    """The columns every table shares, taken from a ``files`` row, with status ok."""
    return {
        "media_id": file_row["media_id"],
        "input": file_row["input"],
        "path": file_row["path"],
        "status": STATUS_OK,
        "error": None,
    }


def error_row(file_row: Mapping[str, Any], message: str) -> dict[str, Any]:
    return {**base_row(file_row), "status": STATUS_ERROR, "error": message}


def to_arrow(
    name: str, rows: Sequence[Mapping[str, Any]] | pa.Table, metadata: Mapping[bytes, bytes] | None = None
) -> pa.Table:
    """The rows (dicts, or an Arrow table built column by column) as the table's schema, its metadata the
    table version and ``metadata``."""
    schema = SCHEMAS[name]
    stamped = schema.with_metadata({**(metadata or {}), VERSION_KEY: str(VERSIONS[name]).encode()})
    if isinstance(rows, pa.Table):
        return rows.select(schema.names).cast(stamped)
    text = [f.name for f in schema if pa.types.is_string(f.type)]
    clean = [{**r, **{k: displayable(r[k]) for k in text if isinstance(r.get(k), str)}} for r in rows]
    return pa.Table.from_pylist(clean, schema=stamped)


def part_version(schema: pa.Schema) -> int:
    """The table version a part was written with (1 for parts from before versions were recorded)."""
    return int((schema.metadata or {}).get(VERSION_KEY, b"1"))


def write_parquet(table: pa.Table, target: str | os.PathLike[str]) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_part(
    name: str,
    rows: Sequence[Mapping[str, Any]] | pa.Table,
    target: str | os.PathLike[str],
    metadata: Mapping[bytes, bytes] | None = None,
) -> None:
    table = to_arrow(name, rows, metadata)
    write_parquet(table, target)
    counts = Counter(table.column("status").to_pylist()) if "status" in table.column_names else {}
    log.info("%s: %d rows (%s) -> %s", name, table.num_rows, ", ".join(f"{n} {s}" for s, n in counts.items()), target)


def read_part(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a part; in ``files`` rows, ``path`` is the real path again even for a name that is not valid
    UTF-8 (kept exactly in ``raw_path``), so steps can open it."""
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row.get("raw_path"):
            row["path"] = os.fsdecode(row["raw_path"])
    return rows


def consolidate(name: str, parts: Iterable[str | os.PathLike[str]], target: str | os.PathLike[str]) -> int:
    """Make ``target`` the dataset directory of the step's parts (hard links, or copies where the parts
    live on another file system); returns the row count. The directory is built beside the target and
    renamed into place, so readers never see half a table."""
    schema = SCHEMAS[name]
    target = Path(target)
    building = target.with_name(f".{target.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    rows = 0
    for part in sorted(map(Path, parts)):
        found = pq.read_schema(part)
        if not found.equals(schema, check_metadata=False):
            shutil.rmtree(building)
            raise ValueError(
                f"{part} does not have the {name} table's columns (written by another version?); "
                f"delete it or rerun the step with `snakemake --forcerun {name}`"
            )
        if part_version(found) != VERSIONS[name]:
            shutil.rmtree(building)
            raise ValueError(
                f"{part} holds version {part_version(found)} of the {name} table, this code writes version "
                f"{VERSIONS[name]}: rerun the step (`snakemake --forcerun {name}`) instead of mixing the two"
            )
        rows += pq.read_metadata(part).num_rows
        try:
            os.link(part, building / part.name)
        except OSError:
            shutil.copyfile(part, building / part.name)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()  # a single-file table from an earlier version
    os.replace(building, target)
    return rows


def _path(name: str, results: str | os.PathLike[str]) -> Path:
    if name not in SCHEMAS:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}")
    return Path(results) / "tables" / f"{name}.parquet"


def _frame(table: pa.Table) -> pd.DataFrame:
    """pandas' nullable dtypes (integer columns with missing values, such as the hash of a file that failed,
    stay integers instead of turning into floats), timestamps as ``datetime64``, :data:`CATEGORIES` as
    categories."""
    # Imported here, not at the top: every pipeline job imports this module, and pandas alone costs about
    # 0.3 s of interpreter start-up per job.
    import pandas as pd

    nullable = {
        pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype(),
        pa.float32(): pd.Float32Dtype(), pa.float64(): pd.Float64Dtype(), pa.string(): pd.StringDtype(),
    }  # fmt: skip
    df = table.to_pandas(types_mapper=nullable.get)
    for column in CATEGORIES:
        if column in df.columns:
            df[column] = df[column].astype("category")
    return df


def load(name: str, results: str | os.PathLike[str] = "results", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The table ``<results>/tables/<name>.parquet`` as a DataFrame with proper dtypes (see :func:`_frame`).
    Embeddings stay a column of arrays; :func:`load_embeddings` gives them as one matrix."""
    return _frame(pq.read_table(_path(name, results), columns=columns))


def frame(name: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A step's rows as :func:`load` gives its table: the table's columns, pandas' nullable dtypes."""
    return _frame(to_arrow(name, rows))


class Embeddings(NamedTuple):
    rows: pd.DataFrame
    """The table's ok rows without the embedding column (media_id, frame_index, ...), index 0..n−1."""
    matrix: np.ndarray
    """float32 (n, dim), row i the embedding of ``rows.iloc[i]``; unit length, so ``matrix @ v`` is cosine."""


def load_embeddings(name: str, results: str | os.PathLike[str] = "results") -> Embeddings:
    """The ok rows of an embedding table (``dino``, ``clip``, ``face_embeddings``) and their embeddings as
    one 2-D array, built from the Arrow buffer without a Python object per row."""
    import pyarrow.compute as pc  # 26 ms to import: only where a table is read back

    table = pq.read_table(_path(name, results))
    if "embedding" not in table.column_names:
        raise KeyError(f"table {name!r} has no embedding column")
    table = table.filter(pc.equal(table.column("status"), STATUS_OK))
    return Embeddings(_frame(table.drop_columns(["embedding", "status", "error"])), embedding_matrix(table))


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column (fixed-size lists of float32) as an (n, dim) array, from the Arrow buffer."""
    dim = table.schema.field("embedding").type.list_size
    return table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


Source = str | os.PathLike[str] | pa.Table | Sequence[Mapping[str, Any]]
"""A table as a path (Parquet file or dataset), an Arrow table, or row dicts."""


def read_columns(name: str, source: Source, columns: Sequence[str]) -> pa.Table:
    """``columns`` of table ``name`` from any :data:`Source`, with the table's types (row dicts may lack
    columns: those are null), in the source's row order, for steps that must not hold a million rows as
    Python objects."""
    if isinstance(source, str | os.PathLike):
        return pq.read_table(source, columns=list(columns))
    if isinstance(source, pa.Table):
        return source.select(list(columns))
    schema = pa.schema([SCHEMAS[name].field(c).with_nullable(True) for c in columns])
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in source], schema=schema)


def embedding_rows(source: str | os.PathLike[str] | pa.Table, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (positions in the table, in that order) of its ``embedding`` column as one float32
    (len(rows), dim) array. A Parquet source is read one record batch at a time into that array, so that
    two million 512-d faces take their 4 GB once, not again as an Arrow table and a copy."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(source, pa.Table):
        return embedding_matrix(source.select(["embedding"]).take(pa.array(rows)))
    dataset = pq.ParquetDataset(source)
    dim = dataset.schema.field("embedding").type.list_size
    out = np.empty((len(rows), dim), dtype=np.float32)
    # Where each table row goes in ``out`` (-1: not wanted); positions count rows over the parts in the order
    # pq.read_table reads them.
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in dataset.files)
    target = np.full(total, -1, dtype=np.int64)
    target[rows] = np.arange(len(rows))
    offset = 0
    for f in dataset.files:
        for batch in pq.ParquetFile(f).iter_batches(columns=["embedding"], batch_size=65536):
            want = target[offset : offset + batch.num_rows]
            keep = np.flatnonzero(want >= 0)
            if len(keep):
                # ``values``, not ``flatten()``: a null row (an error row) keeps its slots, so rows stay aligned.
                column = batch.column(0)
                values = column.values.slice(column.offset * dim, len(column) * dim)
                matrix = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
                if len(keep) == len(want):
                    out[want] = matrix
                else:
                    out[want[keep]] = matrix[keep]
            offset += batch.num_rows
    return out


def people_faces(results: str | os.PathLike[str] = "results") -> pd.DataFrame:
    """The ``people`` table one row per face: ``person_id``, ``media_id``, ``frame_index``, ``face_index``."""
    import pyarrow.compute as pc  # 26 ms to import: only where a table is read back

    table = pq.read_table(_path("people", results), columns=["person_id", "faces"])
    faces = table.column("faces").combine_chunks()
    person = pc.list_parent_indices(faces)
    flat = faces.flatten()
    out = pa.table(
        {
            "person_id": pc.take(table.column("person_id"), person),
            **{field.name: flat.field(field.name) for field in FACE},
        }
    )
    return _frame(out)
