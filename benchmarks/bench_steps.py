"""Throughput of the hashes, exif and thumbnails steps next to reference tools, on the same files, in one run.

    python benchmarks/make_corpus.py --out /tmp/bench_corpus
    python benchmarks/bench_steps.py --corpus /tmp/bench_corpus --work /tmp/bench_work --markdown /tmp/bench.md

What it does:

1. Reads every corpus file once, so the page cache holds all of them and neither side pays for the disk.
2. Then ``--rounds`` rounds (default 3), each running every measurement below once; a row reports the best
   round (the median is shown too). Before each measurement it waits (up to ``--quiet-wait`` seconds) for the
   machine to be idle, and it records the CPU time other processes used while it ran ("foreign CPU"), so a
   number taken on a busy machine is visible as such.

   Reference tools over the photos: ``sha512sum`` (one process); one ``exiftool -j -n`` over an argument
   file; ``exiftool -j -n`` once per file (a sample); ``vipsthumbnail`` writing 1024 and 256 px in two
   parallel processes (each over every other file, 1024 px then 256 px, both from the original), with
   libvips' default thread pool and with ``VIPS_CONCURRENCY=1``; in-process Pillow loops on one core
   (draft mode + ``Image.thumbnail`` at 1024 and 256 px, a full decode, a full decode plus SHA-512 of the
   pixels) on a sample.

   Ours: ``snakemake --cores N`` in a work directory with a generated config.yaml whose single shard holds
   every photo, one step per command (``--forcerun STEP``): files, byte hashes (sha512 + md5, no pixel,
   perceptual or video hash), exif, thumbnails, then hashes with the pixel hash and with pixel + perceptual
   hashes, to cost those separately. A step's time is the ``s`` column of Snakemake's benchmark TSV (the
   job's wall time, interpreter start included); the whole command's wall and CPU time are kept too.
3. Once, the videos alone (all steps but hls in one snakemake run), per video; no reference tool for those.

``--steps`` picks a subset (``hashes,exif,thumbnails,pixel``) and ``--replicate K`` hard-links every photo
K times under new names, to see the same bytes as a K times bigger shard (the fixed cost of a job spread
over more files). It prints Markdown tables (``--markdown FILE`` writes them to a file too) and leaves every
sample in ``WORK/results.json``. The work directory is wiped at the start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO_SUFFIXES = {".jpg", ".jpeg"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv"}
TOOLS = ("sha512sum", "exiftool", "vipsthumbnail", "ffmpeg", "ffprobe", "git")
# The issue's targets: our files/s over the reference's files/s.
TARGETS = {"hashes": 1.3, "exif": 1.0, "thumbnails": 2.0}
STEPS = ("hashes", "exif", "thumbnails", "pixel")
# The machine counts as idle below this many busy cores (averaged over a second).
QUIET_CORES = 0.15


@dataclass
class Sample:
    """One timed execution. ``job_*`` are filled for snakemake runs from the step job's benchmark TSV."""

    wall_s: float
    cpu_s: float
    foreign_cpu_s: float
    job_s: float | None = None
    job_cpu_s: float | None = None
    job_max_rss_mb: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def time_s(self) -> float:
        """The time a row is judged by: the job's own time for snakemake runs, else the wall time."""
        return self.job_s if self.job_s is not None else self.wall_s


@dataclass
class Measurement:
    """One row of the report: every round's sample of the same command or loop."""

    key: str
    name: str
    files: int
    detail: str = ""
    samples: list[Sample] = field(default_factory=list)

    @property
    def best(self) -> Sample:
        return min(self.samples, key=lambda s: s.time_s)

    @property
    def median_s(self) -> float:
        return statistics.median(s.time_s for s in self.samples)

    @property
    def files_per_s(self) -> float:
        return self.files / self.best.time_s

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "best_s": self.best.time_s, "median_s": self.median_s}


# ------------------------------------------------------------------------------------------ measuring


def own_cpu_s() -> float:
    """CPU seconds of this process and of every descendant it has waited for."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (steal included: time the host gave to others)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float) -> float:
    """Wait until the machine is idle (another developer's test run must not land inside a measurement);
    returns the seconds waited. Gives up after ``max_wait_s`` and lets the foreign CPU column show it."""
    start = time.perf_counter()
    announced = False
    while True:
        busy0, t0 = system_busy_s(), time.perf_counter()
        time.sleep(1.0)
        load = (system_busy_s() - busy0) / (time.perf_counter() - t0)
        waited = time.perf_counter() - start
        if load < QUIET_CORES or waited >= max_wait_s:
            if announced:
                print(f"    (waited {waited:.0f} s for an idle machine; load now {load:.2f} cores)", file=sys.stderr)
            return waited
        if not announced:
            print(f"    machine busy ({load:.2f} cores); waiting ...", file=sys.stderr, flush=True)
            announced = True


def measured(fn: Callable[[], None]) -> Sample:
    """Run ``fn``; its wall time, the CPU it and its children used, and the CPU everything else used."""
    busy0, own0, t0 = system_busy_s(), own_cpu_s(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    own = own_cpu_s() - own0
    return Sample(wall, own, max(0.0, system_busy_s() - busy0 - own))


def run_commands(chains: Sequence[Sequence[Sequence[str]]], out: Path, env: dict[str, str] | None = None) -> None:
    """Run each chain of commands in its own thread, so the chains run as parallel processes; stdout goes to
    files under ``out`` (so output costs what it would in real use), stderr to a log there."""
    errors: list[BaseException] = []

    def run_chain(index: int, chain: Sequence[Sequence[str]]) -> None:
        try:
            with open(out / f"stdout.{index}", "wb") as sink, open(out / f"stderr.{index}", "wb") as err:
                for cmd in chain:
                    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=sink, stderr=err, env=env)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run_chain, args=(i, chain)) for i, chain in enumerate(chains)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def warm_cache(paths: Sequence[Path]) -> tuple[int, float]:
    """Read every file once so later reads come from the page cache; returns (bytes, seconds)."""
    total, t0 = 0, time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(8 << 20):
                total += len(chunk)
    return total, time.perf_counter() - t0


def batches(items: Sequence[Path], size: int = 1000) -> list[list[str]]:
    """Split a long file list so no command line gets near ARG_MAX."""
    return [[str(p) for p in items[i : i + size]] for i in range(0, len(items), size)]


def first_line(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd).stdout.strip()
    except OSError:
        return "missing"
    return out.splitlines()[0] if out else "unknown"


def machine_info() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(ln.split()[1]) for ln in meminfo.splitlines() if ln.startswith("MemTotal")), 0)
    # The code under test may be mid-edit; say exactly which version was measured.
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "workflow", "Snakefile"],
        capture_output=True, text=True, check=False, cwd=REPO,
    ).stdout  # fmt: skip
    changed = [ln[3:] for ln in status.splitlines() if ln.strip()]
    return {
        "nproc": first_line(["nproc"]),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "snakemake": first_line([str(snakemake_path()), "--version"]),
        "sha512sum": first_line(["sha512sum", "--version"]),
        "exiftool": first_line(["exiftool", "-ver"]),
        "vips": first_line(["vipsthumbnail", "--vips-version"]),
        "ffmpeg": first_line(["ffmpeg", "-version"]).split(" Copyright")[0],
        "commit": first_line(["git", "rev-parse", "--short", "HEAD"], REPO),
        "uncommitted": ", ".join(changed),
    }


def snakemake_path() -> Path:
    found = Path(sys.executable).with_name("snakemake")
    return found if found.exists() else Path(shutil.which("snakemake") or "snakemake")


# ----------------------------------------------------------------------------------------- reference tools


def reference_measurements(photos: Sequence[Path], sample: int, steps: set[str]) -> dict[str, Measurement]:
    """The reference measurements that the selected ``steps`` are compared with."""
    n, k = len(photos), min(sample, len(photos))
    wanted = [
        ("hashes", n, "sha512sum", "`sha512sum` (1 process)", ""),
        ("exif", n, "exiftool", "one `exiftool -j -n -@ ARGFILE`", ""),
        ("thumbnails", n, "vips", "`vipsthumbnail` 1024 + 256 px, 2 processes", "VIPS_CONCURRENCY unset"),
        ("thumbnails", n, "vips_c1", "`vipsthumbnail` 1024 + 256 px, 2 processes", "VIPS_CONCURRENCY=1"),
        ("exif", k, "exiftool_per_file", "`exiftool -j -n FILE`, once per file", ""),
        ("thumbnails", k, "pillow_draft", "Pillow draft mode + `thumbnail()` 1024 + 256 px, 1 thread", ""),
        ("pixel", k, "pillow_full", "Pillow full decode, 1 thread", ""),
        ("pixel", k, "pillow_pixel_sha", "Pillow full decode + sha512(pixels), 1 thread", ""),
    ]
    return {
        key: Measurement(key, name, files, detail)
        for step, files, key, name, detail in wanted
        if step in steps and files
    }


def reference_round(refs: dict[str, Measurement], photos: Sequence[Path], out: Path, quiet_wait: float) -> None:
    """One sample of every reference measurement; ``out`` is this round's scratch directory."""
    out.mkdir(parents=True)
    n = len(photos)

    def sample(key: str, fn: Callable[[], None]) -> None:
        wait_for_quiet(quiet_wait)
        refs[key].samples.append(measured(fn))

    if "sha512sum" in refs:
        sha = [[["sha512sum", "--", *b] for b in batches(photos)]]
        sample("sha512sum", lambda: run_commands(sha, mkdir(out / "sha")))

    if "exiftool" in refs:
        argfile = out / "exiftool_args.txt"
        argfile.write_text("".join(f"{p}\n" for p in photos))
        exif_out = mkdir(out / "exiftool")
        sample("exiftool", lambda: run_commands([[["exiftool", "-j", "-n", "-@", str(argfile)]]], exif_out))
        if len(json.loads((exif_out / "stdout.0").read_bytes())) != n:
            raise RuntimeError(f"exiftool did not return {n} records; see {exif_out}")

    # Two processes, each over every other file (balanced halves); each writes the 1024 px preview and then
    # the 256 px thumb, both from the original (libvips shrinks on load, so the 256 px pass decodes at 1/8).
    # Q=85 and strip match what our thumbnails step writes (quality 85, no metadata).
    for key, concurrency in (("vips", None), ("vips_c1", "1")):
        if key not in refs:
            continue
        vips_out = mkdir(out / key)
        chains = []
        for half in (photos[0::2], photos[1::2]):
            chain = []
            for size, role in ((1024, "preview"), (256, "thumb")):
                template = f"{vips_out}/%s.{role}.jpg[Q=85,strip]"
                chain += [["vipsthumbnail", "-s", str(size), "-o", template, *b] for b in batches(half)]
            chains.append(chain)
        env = dict(os.environ)
        env.pop("VIPS_CONCURRENCY", None)
        if concurrency:
            env["VIPS_CONCURRENCY"] = concurrency
        sample(key, lambda chains=chains, vips_out=vips_out, env=env: run_commands(chains, vips_out, env))
        if (written := len(list(vips_out.glob("*.jpg")))) != 2 * n:
            raise RuntimeError(f"vipsthumbnail wrote {written} files for {n} photos")

    if "exiftool_per_file" in refs:
        per_file = [[["exiftool", "-j", "-n", str(p)] for p in photos[: refs["exiftool_per_file"].files]]]
        sample("exiftool_per_file", lambda: run_commands(per_file, mkdir(out / "exiftool_per_file")))
    if "pillow_draft" in refs:
        pillow_out = mkdir(out / "pillow")
        sample("pillow_draft", each(lambda p: pillow_thumbs(p, pillow_out), photos[: refs["pillow_draft"].files]))
    if "pillow_full" in refs:
        sample("pillow_full", each(pillow_full_decode, photos[: refs["pillow_full"].files]))
        sample("pillow_pixel_sha", each(pillow_pixel_sha, photos[: refs["pillow_pixel_sha"].files]))


def each(fn: Callable[[Path], None], paths: Sequence[Path]) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            fn(path)

    return run


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}


def pillow_thumbs(path: Path, out: Path) -> None:
    """Plain Pillow, no pipeline: JPEG draft mode and ``Image.thumbnail``'s defaults (BICUBIC, reducing_gap 2),
    the 256 px thumb from the 1024 px preview. A per-core yardstick that does not change with our code."""
    with Image.open(path) as im:
        orientation = im.getexif().get(0x0112, 1)
        im.draft("RGB", (1024, 1024))
        im.thumbnail((1024, 1024))
        preview = im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im.copy()
    preview.save(out / f"{path.stem}.preview.jpg", "JPEG", quality=85)
    thumb = preview.copy()
    thumb.thumbnail((256, 256))
    thumb.save(out / f"{path.stem}.thumb.jpg", "JPEG", quality=85)


def pillow_full_decode(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def pillow_pixel_sha(path: Path) -> None:
    with Image.open(path) as im:
        im.load()
        hashlib.sha512(im.tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ ours


def base_config(inputs: dict[str, str], results: Path, n_files: int) -> dict[str, Any]:
    """The project's config.yaml with our inputs, one shard for everything, and every optional step off."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["inputs"] = inputs
    config["results"] = str(results)
    # One shard holding every file: one job per step, which is what --cores 2 with threads: 2 exercises.
    config["sharding"] = {"shard_size": max(1, n_files) + 1, "shards": None}
    for section in config.values():
        if isinstance(section, dict) and isinstance(section.get("enabled"), bool):
            section["enabled"] = False
    return config


def with_steps(config: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(config))
    for step, values in sections.items():
        out[step] = {**out[step], **values}
    return out


def read_benchmark(tsv: Path) -> dict[str, str]:
    lines = tsv.read_text().splitlines()
    return dict(zip(lines[0].split("\t"), lines[-1].split("\t"), strict=True))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "NA") else None
    except ValueError:
        return None


def part_statuses(part: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in pq.read_table(part, columns=["status"]).column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return counts


def job_record(sample: Sample, results: Path, step: str) -> Sample:
    record = read_benchmark(results / "benchmarks" / step / "0000.tsv")
    sample.job_s, sample.job_cpu_s, sample.job_max_rss_mb = (
        _float(record.get(k)) for k in ("s", "cpu_time", "max_rss")
    )
    sample.statuses = part_statuses(results / "parts" / step / "0000.parquet")
    return sample


def run_snakemake(workdir: Path, config: dict[str, Any], cores: int, label: str, extra: Sequence[str]) -> Sample:
    """Write ``config`` to ``workdir/config.yaml`` and run snakemake there; the whole command, measured."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(snakemake_path()), "-s", str(REPO / "Snakefile"), "--cores", str(cores), *extra]
    log = workdir / f"snakemake_{label}.log"

    def run() -> None:
        with open(log, "ab") as sink:
            sink.write(f"\n$ {' '.join(cmd)}\n".encode())
            sink.flush()
            proc = subprocess.run(cmd, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake ({label}) failed with {proc.returncode}; see {log}")

    return measured(run)


@dataclass
class PhotoPlan:
    """Our runs over the photos: (key, step, config, description) in the order they run in each round."""

    workdir: Path
    runs: list[tuple[str, str, dict[str, Any], str]]


def photo_plan(photos_dir: Path, n: int, work: Path, steps: set[str]) -> PhotoPlan:
    workdir = mkdir(work / "ours_photos")
    base = base_config({"bench": str(photos_dir)}, workdir / "results", n)
    bytes_only = {"enabled": True, "bytes": ["sha512", "md5"], "pixel": False, "perceptual": False, "video": False}
    # Thumbnails stay off in the hashes runs: a photo's perceptual hash does not use them, and the hashes rule
    # would otherwise wait for the thumbnails part.
    runs = [
        ("files", "files", base, "files (inventory + sniff)"),
        ("hashes", "hashes", with_steps(base, hashes=bytes_only), "byte hashes (sha512 + md5, one read)"),
        ("exif", "exif", with_steps(base, exif={"enabled": True}), "exif (exiftool batch)"),
        ("thumbnails", "thumbnails", with_steps(base, thumbnails={"enabled": True}), "thumbnails (1024 + 256 px)"),
        ("hashes_pixel", "hashes", with_steps(base, hashes={**bytes_only, "pixel": True}), "hashes: bytes + pixel"),
        (
            "hashes_pixel_perceptual",
            "hashes",
            with_steps(base, hashes={**bytes_only, "pixel": True, "perceptual": True}),
            "hashes: bytes + pixel + perceptual",
        ),
    ]
    # The pixel runs are costed against the bytes-only run, so they bring it along.
    keep = (
        {"files"}
        | (steps & {"hashes", "exif", "thumbnails"})
        | ({"hashes", "hashes_pixel", "hashes_pixel_perceptual"} if "pixel" in steps else set())
    )
    return PhotoPlan(workdir, [run for run in runs if run[0] in keep])


def ours_round(plan: PhotoPlan, ours: dict[str, Measurement], cores: int, quiet_wait: float) -> None:
    results = plan.workdir / "results"
    for key, step, config, _ in plan.runs:
        print(f"  snakemake: {key} ...", file=sys.stderr, flush=True)
        started = time.time()
        wait_for_quiet(quiet_wait)
        sample = run_snakemake(plan.workdir, config, cores, key, ["--forcerun", step])
        tsv = results / "benchmarks" / step / "0000.tsv"
        if not tsv.exists() or tsv.stat().st_mtime < started:
            raise RuntimeError(f"snakemake ({key}) did not run the {step} job (no fresh {tsv})")
        ours[key].samples.append(job_record(sample, results, step))


def video_runs(videos_dir: Path, n: int, work: Path, cores: int, quiet_wait: float) -> dict[str, Measurement]:
    """Every step but hls over the videos in one snakemake run; one measurement per step job."""
    workdir = mkdir(work / "ours_videos")
    results = workdir / "results"
    config = with_steps(
        base_config({"bench_videos": str(videos_dir)}, results, n),
        hashes={"enabled": True},
        exif={"enabled": True},
        thumbnails={"enabled": True},
    )
    print("  snakemake: videos ...", file=sys.stderr, flush=True)
    wait_for_quiet(quiet_wait)
    whole = run_snakemake(workdir, config, cores, "videos", [])
    out = {"command": Measurement("command", "whole snakemake command", n, samples=[whole])}
    for step in ("files", "thumbnails", "hashes", "exif"):
        sample = job_record(Sample(whole.wall_s, whole.cpu_s, whole.foreign_cpu_s), results, step)
        out[step] = Measurement(step, step, n, samples=[sample])
    return out


# --------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def rows_text(statuses: dict[str, int], expected_ok: int | None) -> str:
    text = ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
    if expected_ok is not None and (statuses.get("ok", 0) != expected_ok or len(statuses) != 1):
        return f"**{text} (expected {expected_ok} ok)**"
    return text


def pixel_table(add: Callable[[str], None], ours: dict[str, Measurement], n: int) -> None:
    """The pixel and perceptual hashes as extra cost over the run before: the commands differ only in them."""
    add("Pixel and perceptual hashes, as the extra cost over the run before (same command otherwise; CPU from the "
        "whole command, which is exact):")  # fmt: skip
    add("")
    add("| Hashes run | Job s | Extra job wall ms / photo | Extra CPU ms / photo |")
    add("|---|---:|---:|---:|")
    add(f"| bytes only | {fmt(ours['hashes'].best.time_s)} | - | - |")
    for key, prev in (("hashes_pixel", "hashes"), ("hashes_pixel_perceptual", "hashes_pixel")):
        cur, base = ours[key].best, ours[prev].best
        extra_wall = (cur.time_s - base.time_s) / n * 1000
        extra_cpu = (cur.cpu_s - base.cpu_s) / n * 1000
        add(f"| {ours[key].name} | {fmt(cur.time_s)} | {extra_wall:.0f} | {extra_cpu:.0f} |")


def report(
    info: dict[str, str],
    n: int,
    corpus_bytes: int,
    warm: tuple[int, float],
    rounds: int,
    refs: dict[str, Measurement],
    ours: dict[str, Measurement],
    videos: dict[str, Measurement],
    cores: int,
) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"Machine: {info['nproc']} cores (`nproc`), {info['cpu']}, {info['memory']} RAM, Linux {info['kernel']}.  ")
    add(
        f"Tools: Python {info['python']}, Pillow {info['pillow']}, Snakemake {info['snakemake']}, {info['sha512sum']}, "
        f"exiftool {info['exiftool']}, {info['vips']}, {info['ffmpeg']}.  "
    )
    code = f"commit {info['commit']}" + (
        f" plus uncommitted changes to {info['uncommitted']}" if info["uncommitted"] else ""
    )
    add(f"Code measured: {code}.  ")
    add(
        f"Corpus: {n} photos, {corpus_bytes / 1e6:.0f} MB. Page cache warmed by reading all {warm[0] / 1e6:.0f} MB "
        f"once ({warm[1]:.1f} s) before anything was timed, so every row reads cached files. Each row: best of "
        f"{rounds} rounds (median in the detail table)."
    )
    add("")
    vips_keys = [k for k in ("vips", "vips_c1") if k in refs]
    vips_key = min(vips_keys, key=lambda k: refs[k].best.time_s) if vips_keys else "vips"
    pairs = [
        (key, ref_key)
        for key, ref_key in (("hashes", "sha512sum"), ("exif", "exiftool"), ("thumbnails", vips_key))
        if key in ours and ref_key in refs
    ]
    if pairs:
        add(f"| Step (ours: `snakemake --cores {cores}`, one shard) | Ours: job s | Ours files/s | Reference | "
            "Ref s | Ref files/s | Ours / ref | Target | Met |")  # fmt: skip
        add("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for key, ref_key in pairs:
        mine, ref = ours[key], refs[ref_key]
        ratio = mine.files_per_s / ref.files_per_s
        ref_label = ref.name + (f" ({ref.detail})" if ref.detail else "")
        add(
            f"| {mine.name} | {fmt(mine.best.time_s)} | {fmt(mine.files_per_s, 1)} | {ref_label} | "
            f"{fmt(ref.best.time_s)} | {fmt(ref.files_per_s, 1)} | {ratio:.2f}x | >= {TARGETS[key]}x | "
            f"{'yes' if ratio >= TARGETS[key] else '**no**'} |"
        )
    add("")
    add("Our runs in detail. Job = the step's job as Snakemake's benchmark TSV records it (interpreter start "
        "included; its CPU time is sampled every 0.5 s, so it can miss the last moments). Command = the whole "
        "`snakemake` command: workflow parsing, the inventory scan, the job, consolidation into `tables/`. "
        "Foreign CPU = CPU seconds other processes used during the best sample.")  # fmt: skip
    add("")
    add("| Run | Job s best | Job s median | Job files/s | Job CPU s | Job max RSS MB | Command wall s | "
        "Command CPU s | Command files/s | Foreign CPU s | Rows |")  # fmt: skip
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for key, m in ours.items():
        b = m.best
        expected = 2 * n if key == "thumbnails" else n
        add(
            f"| {m.name} | {fmt(b.time_s)} | {fmt(m.median_s)} | {fmt(m.files_per_s, 1)} | {fmt(b.job_cpu_s)} | "
            f"{fmt(b.job_max_rss_mb, 0)} | {fmt(b.wall_s)} | {fmt(b.cpu_s)} | {fmt(n / b.wall_s, 1)} | "
            f"{fmt(b.foreign_cpu_s)} | {rows_text(b.statuses, expected)} |"
        )
    add("")
    add("References in detail (wall time; CPU = this measurement's own CPU seconds):")
    add("")
    add("| Reference | Files | s best | s median | files/s | ms / file | CPU ms / file | Foreign CPU s |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in refs.values():
        b = m.best
        label = m.name + (f" ({m.detail})" if m.detail else "") + ("" if m.files == n else f", first {m.files} photos")
        add(
            f"| {label} | {m.files} | {fmt(b.time_s)} | {fmt(m.median_s)} | {fmt(m.files_per_s, 1)} | "
            f"{b.time_s / m.files * 1000:.0f} | {b.cpu_s / m.files * 1000:.0f} | {fmt(b.foreign_cpu_s)} |"
        )
    if "hashes_pixel" in ours:
        add("")
        pixel_table(add, ours, n)
    if videos:
        n_videos = videos["command"].files
        add("")
        add(f"Videos ({n_videos} clips; every step but hls in one snakemake run of "
            f"{fmt(videos['command'].best.wall_s)} s wall; one sample; no reference tool):")  # fmt: skip
        add("")
        add("| Step | Job s | s / video | Rows |")
        add("|---|---:|---:|---|")
        for key, m in videos.items():
            if key != "command":
                b = m.best
                add(f"| {key} | {fmt(b.time_s)} | {b.time_s / max(1, n_videos):.2f} | {rows_text(b.statuses, None)} |")
    return "\n".join(lines) + "\n"


def replicate(photos: Sequence[Path], target: Path, times: int) -> Path:
    """Hard links to every photo, ``times`` each: a bigger shard without more disk or page cache, which shows
    how the fixed cost of a job (interpreter start, imports) is spread over more files."""
    target.mkdir(parents=True)
    for copy in range(times):
        for photo in photos:
            link = target / f"r{copy}_{photo.name}"
            try:
                os.link(photo, link)
            except OSError:  # another file system: a copy costs disk, not accuracy
                shutil.copyfile(photo, link)
    return target


def corpus_files(folder: Path, suffixes: set[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="directory made by make_corpus.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cl_ml_tools_bench"), help="scratch directory (wiped)")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement; best is reported")
    parser.add_argument("--sample", type=int, default=20, help="photos for the per-file and in-process loops")
    parser.add_argument("--quiet-wait", type=float, default=30, help="max seconds to wait for an idle machine")
    parser.add_argument("--skip-videos", action="store_true", help="leave out the videos run")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)} (default: all)"
    )
    parser.add_argument(
        "--replicate",
        type=int,
        default=1,
        help="hard-link every photo this many times under new names (same bytes, more files per shard)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)

    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        parser.error(f"missing tools: {', '.join(missing)}")
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    if unknown := steps - set(STEPS):
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    photos_dir, videos_dir = (args.corpus / "photos").resolve(), (args.corpus / "videos").resolve()
    photos = corpus_files(photos_dir, PHOTO_SUFFIXES)
    videos = [] if args.skip_videos else corpus_files(videos_dir, VIDEO_SUFFIXES)
    if not photos:
        parser.error(f"no photos under {photos_dir}")
    work = args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if args.replicate > 1:
        photos_dir = replicate(photos, work / "replicated" / "photos", args.replicate)
        photos = corpus_files(photos_dir, PHOTO_SUFFIXES)

    info = machine_info()
    n = len(photos)
    corpus_bytes = sum(p.stat().st_size for p in photos)
    print(f"warming the page cache: {n} photos, {len(videos)} videos ...", file=sys.stderr, flush=True)
    warm = warm_cache([*photos, *videos])

    refs = reference_measurements(photos, args.sample, steps)
    plan = photo_plan(photos_dir, n, work, steps)
    ours = {key: Measurement(key, name, n) for key, _, _, name in plan.runs}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: reference tools ...", file=sys.stderr, flush=True)
        reference_round(refs, photos, work / "reference" / f"round{r + 1}", args.quiet_wait)
        print(f"round {r + 1}/{args.rounds}: ours ...", file=sys.stderr, flush=True)
        ours_round(plan, ours, args.cores, args.quiet_wait)
    vids = video_runs(videos_dir, len(videos), work, args.cores, args.quiet_wait) if videos else {}

    text = report(info, n, corpus_bytes, warm, args.rounds, refs, ours, vids, args.cores)
    if args.replicate > 1:
        text = (
            f"Replicated corpus: each of the {n // args.replicate} photos hard-linked {args.replicate} times "
            "(same bytes and page-cache pages, distinct names and media ids).\n\n" + text
        )
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    raw = {
        "machine": info,
        "photos": n,
        "corpus_bytes": corpus_bytes,
        "rounds": args.rounds,
        "references": {k: m.to_json() for k, m in refs.items()},
        "ours": {k: m.to_json() for k, m in ours.items()},
        "videos": {k: m.to_json() for k, m in vids.items()},
    }
    (work / "results.json").write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
