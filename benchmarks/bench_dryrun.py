"""Wall time of ``snakemake -n`` on a finished run of an N-file archive: what a person waits for before
every run, and what ``--lint`` and a rerun with nothing new pay.

    .venv/bin/python benchmarks/bench_dryrun.py --work /tmp/dryrun --files 200000

The archive looks like a camera archive: ``YEAR/YEAR-MM/YEAR-MM-DD/IMG_NNNNNN.jpg``, 200 one-byte files
per day folder (``--per-folder``); it is made once and reused. The finished run is materialised as
``bench_scale.py`` does (every output written in DAG order), then ``snakemake --touch --forceall`` records
Snakemake's per-job metadata the way a real run does (its params, code and input checks are part of a
dry run's cost; ``--no-metadata`` skips this, about 4 minutes at 200 000 files). Then, each a separate
process, wall seconds and the CPU seconds of the process:

1. ``snakemake -n`` with nothing changed, ``--rounds`` times: the number to compare;
2. ``snakemake --lint``;
3. one photo added to a day folder: ``snakemake -n`` and the jobs it schedules (one per step);
4. that photo removed again, the run brought up to date (``snakemake --touch``), then one photo rewritten
   in place (same name and size, new bytes and mtime: its folder does not change): the same.

``--compare DIR`` also runs rows 1 to 3 with the Snakefile and ``src/`` of another checkout (``git archive
REV | tar -x -C DIR`` gives a commit's code), alternating with this one round by round on the same results,
so that a busy machine slows both alike; the config is made from that checkout's ``config.yaml``.
``--profile FILE`` writes cProfile stats of one nothing-changed dry run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_scale import job_counts, materialise, write_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def make_archive(root: Path, n: int, per_folder: int) -> list[Path]:
    """The day folders of an ``n``-file archive (made unless a previous call made the same one)."""
    first = datetime.date(2012, 1, 1)
    folders = []
    for f in range((n + per_folder - 1) // per_folder):
        day = first + datetime.timedelta(days=3 * f)
        folders.append(root / f"{day:%Y}" / f"{day:%Y-%m}" / f"{day:%Y-%m-%d}")
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{n} {per_folder}":
        return folders
    shutil.rmtree(root, ignore_errors=True)
    for f, folder in enumerate(folders):
        folder.mkdir(parents=True)
        for i in range(f * per_folder, min(n, (f + 1) * per_folder)):
            fd = os.open(folder / f"IMG_{i:06d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    marker.write_text(f"{n} {per_folder}")
    return folders


class Runner:
    def __init__(self, work: Path):
        self.work = work

    def __call__(self, *args: str, repo: Path = REPO, python: tuple[str, ...] = ()) -> tuple[float, float, str]:
        """(wall s, CPU s, output) of one snakemake command with ``repo``'s Snakefile and library."""
        env = {**os.environ, "PYTHONPATH": str(repo / "src")}  # ahead of this checkout's editable install
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            [*python, str(SNAKEMAKE), "-s", str(repo / "Snakefile"), "--cores", "2", *args],
            cwd=self.work, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        if proc.returncode != 0:
            raise SystemExit(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return wall, cpu, proc.stdout + proc.stderr


def summary(output: str) -> str:
    if "Nothing to be done" in output:
        return "nothing to be done"
    return ", ".join(f"{rule} {count}" for rule, count in sorted(job_counts(output).items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--per-folder", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare", type=Path, help="another checkout to time alongside this one")
    ap.add_argument("--no-metadata", action="store_true", help="skip recording Snakemake's job metadata")
    ap.add_argument("--profile", type=Path, help="also write cProfile stats of one dry run here")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    repos = [REPO] + ([args.compare.resolve()] if args.compare else [])
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "archive"
    start = time.perf_counter()
    folders = make_archive(archive, args.files, args.per_folder)
    print(f"archive: {args.files} files in {len(folders)} folders ({time.perf_counter() - start:.1f} s)")
    added = folders[len(folders) // 2] / "IMG_added.jpg"
    added.unlink(missing_ok=True)
    shutil.rmtree(work / "results", ignore_errors=True)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    config = write_config(work, archive, repos[-1])
    snakemake = Runner(work)
    snakemake("-n")  # the first parse scans the archive and writes the shard lists
    print(f"materialised a finished run in {materialise(config):.1f} s")
    if not args.no_metadata:
        wall, _, _ = snakemake("--touch", "--forceall")
        print(f"recorded Snakemake's metadata of every job in {wall:.1f} s")

    rows = []
    times: dict[Path, tuple[list[float], list[float]]] = {repo: ([], []) for repo in repos}
    for _ in range(args.rounds):
        for repo in repos:
            wall, cpu, out = snakemake("-n", repo=repo)
            times[repo][0].append(wall)
            times[repo][1].append(cpu)
            if "Nothing to be done" not in out:
                raise SystemExit(f"a dry run of the finished run scheduled jobs ({repo}): {summary(out)}")
    for repo, (walls, cpus) in times.items():
        rows.append((f"`snakemake -n`, nothing changed (median of {args.rounds}; {repo})", statistics.median(walls),
                     statistics.median(cpus), f"wall {min(walls):.1f}–{max(walls):.1f}"))  # fmt: skip
    if args.profile:
        snakemake("-n", python=(sys.executable, "-m", "cProfile", "-o", str(args.profile.resolve())))
        print(f"profile of one dry run: {args.profile}")
    for repo in repos:
        wall, cpu, out = snakemake("--lint", repo=repo)
        rows.append((f"`snakemake --lint` ({repo})", wall, cpu, "clean" if "good condition" in out else out[-200:]))

    added.write_bytes(b"x")
    for repo in repos:  # the first rewrites the list; each still scans in full and schedules the same jobs
        wall, cpu, out = snakemake("-n", repo=repo)
        rows.append((f"`snakemake -n` after adding one photo ({repo})", wall, cpu, summary(out)))
    added.unlink()
    snakemake("--touch")  # that shard's outputs newer than its (restored) list again
    victim = folders[0] / sorted(p.name for p in folders[0].iterdir())[0]
    before = victim.stat()
    victim.write_bytes(b"y")  # same name, same size: only its bytes and mtime differ
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    wall, cpu, out = snakemake("-n")
    rows.append(("`snakemake -n` after rewriting one photo in place", wall, cpu, summary(out)))
    victim.write_bytes(b"x")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))

    load = os.getloadavg()[0]
    print(f"| measurement ({args.files:,} files; load average {load:.1f} at the end) | wall s | CPU s | notes |")
    print("|---|---:|---:|---|")
    for name, wall, cpu, note in rows:
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
