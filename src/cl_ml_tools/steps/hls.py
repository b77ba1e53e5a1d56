"""HLS renditions of videos: an H.264/AAC ladder that never upscales, validated after writing."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..data.config import schema_defaults
from ..data.tables import base_row
from ..media import video
from ..media.errors import MediaError
from .common import Converters, Job, Row, StepSettings, map_files, select


@dataclass(frozen=True)
class Rung:
    height: int
    video_kbps: int
    audio_kbps: int = 128

    @property
    def name(self) -> str:
        return f"{self.height}p"


@dataclass(frozen=True)
@schema_defaults("hls")
class Settings(StepSettings):
    CONVERT: ClassVar[Converters] = {"ladder": lambda rungs: tuple(Rung(**r) for r in rungs)}

    ladder: tuple[Rung, ...]
    segment_s: float
    preset: str
    threads: int  # ffmpeg's decoding and scaling threads; 0: the job's. x264's are fixed: X264_SLICES


# x264's threads, one slice of each frame per thread: fixed, so that the bytes (and the measured BANDWIDTH)
# are the same on any machine and under any --cores. Four keep four cores busy at a small cost in size
# (measured: 197,738 bytes against 191,356 with one slice, 2 s of the sample clip at 1400 kb/s: 3 %). x264
# itself lowers it for short frames, from the frame alone (a 240p rung's SEI says threads=3).
X264_SLICES = 4


def plan_ladder(ladder: Sequence[Rung], source_height: int) -> list[Rung]:
    """Rungs no taller than the source; a source smaller than every rung keeps the lowest rung, scaled to
    the source's own (even) height."""
    kept = [r for r in ladder if r.height <= source_height]
    if kept:
        return sorted(kept, key=lambda r: -r.height)
    lowest = min(ladder, key=lambda r: r.height)
    height = max(2, source_height - source_height % 2)
    return [Rung(height, lowest.video_kbps, lowest.audio_kbps)]


def ffmpeg_args(src: str, out_dir: Path, rungs: Sequence[Rung], info: video.VideoInfo, settings: Settings) -> list[str]:
    n = len(rungs)
    has_audio = info.has_audio
    # Audio that runs on after the picture ends (a narration over a short clip) would be muxed into the last
    # segment, making it longer than the target duration and its EXTINF (the video's) wrong; the last frame is
    # held until the audio ends instead, so that segments are still cut every segment_s and nothing is dropped.
    hold = f"tpad=stop_mode=clone:stop_duration={info.audio_overhang:.6f}," if has_audio and info.audio_overhang else ""
    source = f"[0:{info.index}]{hold}{video.matrix_filter(info)}{video.deinterlace_filter(info)}"
    # Square pixels at the displayed aspect ratio (probe's: stored width × sample aspect ratio, then rotated),
    # as players show the source; ``-2`` would keep the stored width's proportion and squash non-square pixels.
    width, height = info.oriented_size
    sizes = [f"scale={max(2, round(r.height * width / height / 2) * 2)}:{r.height},setsar=1" for r in rungs]
    # HDR is tone-mapped to SDR BT.709: the renditions are 8-bit H.264 High, which players take for SDR, and
    # the master playlist names no VIDEO-RANGE, which means SDR (RFC 8216bis; AVFoundation's default too).
    # Once, at the top rung's size, the lower rungs scaled from it: tone-mapping each rung took an HLS encode
    # of a 6 s 1080p HLG clip (rungs 720/480/240) from 4.1 s as SDR to 10.5 s, once to 7.7 s.
    sdr = video.sdr_filter(info)
    if sdr:
        graph = [f"{source}{sizes[0]}{sdr},split={n}[v0]" + "".join(f"[s{i}]" for i in range(1, n))]
        graph += [f"[s{i}]{sizes[i]}[v{i}]" for i in range(1, n)]
    else:
        graph = [f"{source}split={n}" + "".join(f"[s{i}]" for i in range(n))]
        graph += [f"[s{i}]{size}[v{i}]" for i, size in enumerate(sizes)]
    # The settings' threads go to decoding (before -i) and to the scale filters; the encoders' threads are
    # fixed below, so that the bytes do not depend on them.
    threads = str(settings.threads)
    args = [video.FFMPEG, "-nostdin", "-v", "error", "-y", "-threads", threads, "-i", src,
            "-filter_complex_threads", threads, "-filter_complex", ";".join(graph)]  # fmt: skip
    for i, r in enumerate(rungs):
        args += ["-map", f"[v{i}]", f"-c:v:{i}", "libx264", f"-b:v:{i}", f"{r.video_kbps}k"]
        args += [f"-maxrate:v:{i}", f"{int(r.video_kbps * 1.1)}k", f"-bufsize:v:{i}", f"{r.video_kbps * 2}k"]
    if has_audio:
        for i, r in enumerate(rungs):
            args += ["-map", "0:a:0", f"-c:a:{i}", "aac", f"-b:a:{i}", f"{r.audio_kbps}k", f"-ac:a:{i}", "2"]
    stream_map = " ".join(
        f"v:{i},a:{i},name:{r.name}" if has_audio else f"v:{i},name:{r.name}" for i, r in enumerate(rungs)
    )
    seg = f"{settings.segment_s:g}"
    args += [
        "-preset", settings.preset, "-pix_fmt", "yuv420p", "-profile:v", "high",
        # x264's frame threads under a VBV (maxrate) give other bytes on every run (measured: 2 of 3 encodes
        # of the sample clip differed), and so another measured BANDWIDTH; its slice threads do not, but it
        # cuts a frame into one slice per thread, so their number is fixed here, not taken from the job's
        # threads: other bytes under another --cores would mix in one part with the rows it reuses.
        "-x264-params", f"sliced-threads=1:threads={X264_SLICES}",
        # A keyframe exactly every segment length makes every segment the same length and independent.
        "-force_key_frames", f"expr:gte(t,n_forced*{seg})", "-sc_threshold", "0",
        "-f", "hls", "-hls_time", seg, "-hls_playlist_type", "vod", "-hls_flags", "independent_segments",
        "-hls_segment_filename", str(out_dir / "%v" / "segment_%05d.ts"),
        "-master_pl_name", "master.m3u8", "-var_stream_map", stream_map,
        str(out_dir / "%v" / "index.m3u8"),
    ]  # fmt: skip
    return args


_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_master(master: Path) -> list[dict[str, Any]]:
    lines = master.read_text().splitlines()
    if not lines or lines[0].strip() != "#EXTM3U":
        raise MediaError(f"{master.name} is not an M3U8 playlist")
    variants = []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = {k: v.strip('"') for k, v in _ATTR_RE.findall(line.split(":", 1)[1])}
            uri = next((u.strip() for u in lines[i + 1 :] if u.strip() and not u.startswith("#")), None)
            missing = [a for a in ("BANDWIDTH", "RESOLUTION", "CODECS") if not attrs.get(a)]
            if missing or uri is None:
                raise MediaError(f"master playlist variant lacks {', '.join(missing) or 'a URI'}")
            width, _, height = attrs["RESOLUTION"].partition("x")
            variants.append({"bandwidth": int(attrs["BANDWIDTH"]), "width": int(width), "height": int(height),
                             "codecs": attrs["CODECS"], "playlist": uri})  # fmt: skip
    if not variants:
        raise MediaError("master playlist lists no variants")
    return variants


class MediaPlaylist(NamedTuple):
    segments: int
    seconds: float
    peak_bps: float  # RFC 8216 §4.3.4.2's peak segment bit rate
    average_bps: float  # its average segment bit rate: all the segments' bits over the playlist's duration


def check_media_playlist(playlist: Path, segment_s: float) -> MediaPlaylist:
    """Validate a VOD media playlist and its segment files, and measure their bit rates."""
    text = playlist.read_text()
    if "#EXT-X-ENDLIST" not in text:
        raise MediaError(f"{playlist.parent.name}/{playlist.name} has no #EXT-X-ENDLIST")
    target = re.search(r"#EXT-X-TARGETDURATION:(\d+)", text)
    durations = [float(d) for d in re.findall(r"#EXTINF:([0-9.]+)", text)]
    uris = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not target or not durations or len(durations) != len(uris) or min(durations) <= 0:
        raise MediaError(f"{playlist.parent.name}/{playlist.name} is malformed")
    target_s = int(target.group(1))
    if max(durations) > target_s + 0.5 or target_s > math.ceil(segment_s) + 1:
        raise MediaError(
            f"segments in {playlist.parent.name} run to {max(durations):.2f} s, not the {segment_s:g} s asked for"
        )
    sizes = []
    for uri in uris:
        seg = playlist.parent / uri
        size = seg.stat().st_size if seg.is_file() else 0
        if size == 0:
            raise MediaError(f"segment {playlist.parent.name}/{uri} is missing or empty")
        sizes.append(size)
    seconds = sum(durations)
    return MediaPlaylist(len(uris), seconds, peak_bit_rate(sizes, durations, target_s), 8 * sum(sizes) / seconds)


def peak_bit_rate(sizes: Sequence[int], durations: Sequence[float], target_s: int) -> float:
    """The largest bit rate of any run of consecutive segments lasting 0.5 to 1.5 target durations (RFC 8216
    §4.3.4.2). A playlist too short to hold such a run gets its fastest single segment, which no run of
    segments can exceed."""
    rates = []
    for start in range(len(sizes)):
        bits = seconds = 0.0
        for size, duration in zip(sizes[start:], durations[start:], strict=True):
            bits, seconds = bits + 8 * size, seconds + duration
            if seconds > 1.5 * target_s:
                break
            if seconds >= 0.5 * target_s:
                rates.append(bits / seconds)
    return max(rates or (8 * size / duration for size, duration in zip(sizes, durations, strict=True)))


def write_bandwidths(master: Path, measured: Sequence[MediaPlaylist]) -> None:
    """Put the measured peak in each variant's BANDWIDTH, in variant order, and its average in
    AVERAGE-BANDWIDTH. ffmpeg writes the configured rates plus 10 %, which segments exceed wherever the encoder
    spends the rate-control buffer (-bufsize is two seconds of the rate): at the start and in busy scenes."""
    lines = master.read_text().splitlines()
    rates = iter(measured)
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            m = next(rates)
            rest = [f"{k}={v}" for k, v in _ATTR_RE.findall(line.split(":", 1)[1]) if not k.endswith("BANDWIDTH")]
            bandwidths = [f"BANDWIDTH={math.ceil(m.peak_bps)}", f"AVERAGE-BANDWIDTH={math.ceil(m.average_bps)}"]
            lines[i] = "#EXT-X-STREAM-INF:" + ",".join(bandwidths + rest)
    master.write_text("\n".join(lines) + "\n")


def encode(file_row: Mapping[str, Any], out_root: Path, settings: Settings) -> list[Row]:
    """Write ``<out_root>/<media_id>/`` (master.m3u8 plus one folder per rung) and describe it.

    ffmpeg writes into a hidden sibling folder that is renamed into place once validated, so a killed job
    never leaves a half-written rendition where a player would find it.
    """
    path = file_row["path"]
    info = video.probe(path)
    rungs = plan_ladder(settings.ladder, info.oriented_size[1])
    final = out_root / file_row["media_id"]
    work = out_root / f".{file_row['media_id']}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        proc = video.run_tool(ffmpeg_args(path, work, rungs, info, settings))
        if proc.returncode != 0 or not (work / "master.m3u8").exists():
            raise MediaError(f"ffmpeg HLS encode failed: {proc.stderr.decode('utf-8', 'replace').strip()[-400:]}")
        variants = parse_master(work / "master.m3u8")
        measured = [check_media_playlist(work / v["playlist"], settings.segment_s) for v in variants]
        write_bandwidths(work / "master.m3u8", measured)
        for v, rung, m in zip(variants, rungs, measured, strict=True):
            v.update(name=rung.name, bandwidth=math.ceil(m.peak_bps), average_bandwidth=math.ceil(m.average_bps),
                     segments=m.segments)  # fmt: skip
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for v in variants:
        v["playlist"] = str(final / v["playlist"])
    return [{
        **base_row(file_row),
        "master": str(final / "master.m3u8"),
        "variants": variants,
        "duration_s": max(m.seconds for m in measured),
        "segment_count": variants[0]["segments"],
    }]  # fmt: skip


def hls_shard(files: Sequence[Mapping[str, Any]], out_dir: Path, settings: Settings, threads: int = 1) -> list[Row]:
    """Renditions for the videos of a shard, one video after another: ffmpeg already keeps several cores busy
    with one (the rungs' encoders run side by side). Decoding and scaling get the job's ``threads`` unless
    ``settings.threads`` says otherwise; x264 runs :data:`X264_SLICES` threads whatever they are."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if not settings.threads:
        settings = dataclasses.replace(settings, threads=threads)
    return map_files(lambda f: encode(f, out_dir, settings), select(files, ("video",)))


def shard(job: Job) -> list[Row]:
    assert job.out is not None, "hls writes renditions: the job needs an out folder"
    return hls_shard(job.files, job.out, job.settings, job.threads)
