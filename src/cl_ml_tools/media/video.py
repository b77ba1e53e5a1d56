"""ffprobe/ffmpeg helpers shared by the video parts of hashes, thumbnails and hls."""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from .errors import MediaError

FFPROBE = os.environ.get("CL_ML_TOOLS_FFPROBE", "ffprobe")
FFMPEG = os.environ.get("CL_ML_TOOLS_FFMPEG", "ffmpeg")
TIMEOUT_S = 600


def run_tool(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
    """Run an external tool with an argument list (never a shell string) and a time limit."""
    try:
        return subprocess.run(args, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{Path(args[0]).name} took longer than {timeout:.0f} s") from exc


def _last_lines(stderr: bytes, path: str | os.PathLike[str] | None = None, n: int = 3) -> str:
    """The end of a tool's complaint, with the file's full path (already in the row) shortened."""
    text = stderr.decode("utf-8", "replace")
    if path is not None:
        text = text.replace(os.fspath(path), Path(path).name)
    lines = [re.sub(r"^\[[^\]]+ @ 0x[0-9a-f]+\] ", "", ln) for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no message"


@dataclass
class VideoInfo:
    index: int  # the main video stream's (see ``main_video``) index among all the file's streams
    duration: float | None
    width: int
    height: int
    rotation: int  # degrees, as the display matrix asks; ffmpeg applies it when decoding
    codec: str
    has_audio: bool
    audio_codec: str | None
    streams: list[dict[str, Any]] = field(default_factory=list)
    sar: Fraction = Fraction(1)  # the sample (pixel) aspect ratio, in the stored orientation
    start: float = 0.0  # the file's start time (ffprobe's format start_time), which input-side seeks count from

    @property
    def audio_overhang(self) -> float:
        """Seconds by which the first audio stream (the one HLS keeps) ends after the main video stream; 0 when
        it ends first or either length is unknown."""
        video_end = _end(self.stream)
        audio = next((s for s in self.streams if s.get("codec_type") == "audio"), None)
        audio_end = _end(audio) if audio else None
        if video_end is None or audio_end is None:
            return 0.0
        return max(0.0, audio_end - video_end)

    @property
    def stream(self) -> dict[str, Any]:
        """ffprobe's entry for the main video stream."""
        return next(s for s in self.streams if s.get("index") == self.index)

    @property
    def oriented_size(self) -> tuple[int, int]:
        """The size as players show it: the stored width times the sample aspect ratio, then rotated."""
        width = max(1, round(self.width * self.sar))
        if abs(self.rotation) % 180 == 90:
            return self.height, width
        return width, self.height


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Streams and duration of a video; a file without a video stream is an error."""
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    proc = run_tool(
        [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", "--", os.fspath(path)]
    )
    if proc.returncode != 0:
        raise MediaError(f"ffprobe cannot read this file: {_last_lines(proc.stderr, path)}")
    data = json.loads(proc.stdout or b"{}")
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not _is_attached_picture(s)]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not video:
        kinds = ", ".join(sorted({s.get("codec_type", "?") for s in streams})) or "none"
        raise MediaError(f"no video stream (streams found: {kinds})")
    v = main_video(video)
    return VideoInfo(
        index=int(v["index"]),
        duration=_duration(data.get("format", {}), v),
        width=int(v.get("width") or 0),
        height=int(v.get("height") or 0),
        rotation=_rotation(v),
        codec=str(v.get("codec_name")),
        has_audio=bool(audio),
        audio_codec=audio[0].get("codec_name") if audio else None,
        streams=streams,
        sar=_sar(v),
        start=_start(data.get("format", {})),
    )


def _is_attached_picture(stream: dict[str, Any]) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def main_video(video: list[dict[str, Any]]) -> dict[str, Any]:
    """The video stream that is the file's picture, among streams that are not attached pictures: the longest
    (in whole seconds, so that a proxy a frame longer does not win), then the largest, then the default one, as
    ffmpeg's own choice prefers large and default streams. A still (a one-frame MJPEG ahead of the film in a
    Matroska file) is not the first stream's by being first."""
    return max(video, key=lambda s: (round(_stream_seconds(s) or 0.0),
                                     int(s.get("width") or 0) * int(s.get("height") or 0),
                                     s.get("disposition", {}).get("default", 0), -int(s["index"])))  # fmt: skip


def _stream_seconds(stream: dict[str, Any]) -> float | None:
    """A stream's duration: ffprobe's, or Matroska's DURATION tag ("00:00:03.000000000"), which it leaves as a tag."""
    d = _seconds(stream.get("duration"))
    if d is not None:
        return d
    h, _, rest = str(stream.get("tags", {}).get("DURATION", "")).partition(":")
    m, _, sec = rest.partition(":")
    try:
        return _seconds(int(h) * 3600 + int(m) * 60 + float(sec))
    except ValueError:
        return None


def _seconds(value: Any) -> float | None:
    try:
        d = float(value)
    except (TypeError, ValueError):
        return None
    return d if math.isfinite(d) and d > 0 else None


def _duration(fmt: dict[str, Any], stream: dict[str, Any]) -> float | None:
    return _stream_seconds(stream) or _seconds(fmt.get("duration"))


def _end(stream: dict[str, Any]) -> float | None:
    length = _stream_seconds(stream)
    return None if length is None else _start(stream) + length


def _start(entry: dict[str, Any]) -> float:
    """ffprobe's ``start_time`` of the format or of a stream; 0 when unknown."""
    try:
        start = float(entry.get("start_time"))
    except (TypeError, ValueError):
        return 0.0
    return start if math.isfinite(start) else 0.0


def _sar(stream: dict[str, Any]) -> Fraction:
    """ffprobe's ``sample_aspect_ratio`` ("2:1"); "0:1" or none means square pixels, as ffmpeg reads it."""
    num, _, den = str(stream.get("sample_aspect_ratio", "")).partition(":")
    if num.isdigit() and den.isdigit() and int(num) and int(den):
        return Fraction(int(num), int(den))
    return Fraction(1)


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return round(float(side["rotation"]))
    rotate = stream.get("tags", {}).get("rotate")
    return int(rotate) if rotate and rotate.lstrip("-").isdigit() else 0


# Bitstream filters that give H.264 and HEVC one byte form whatever container held them. MP4, MOV and Matroska
# store NAL units with length prefixes and the parameter sets in the header; MPEG-TS stores them in Annex B with
# the parameter sets in-band, and its muxer adds an access unit delimiter (NAL type 9 / 35) to every packet.
# Annex B with parameter sets in front of each IDR and no delimiters is what both give after these filters.
CANONICAL_BSF = {
    "h264": "h264_mp4toannexb,filter_units=remove_types=9",
    "hevc": "hevc_mp4toannexb,filter_units=remove_types=35",
}
CHUNK = 1 << 20


@dataclass
class Packets:
    keyframes: int  # key packets, as the demuxer flags them
    times: list[float]  # presentation times (seconds) of the frames, sorted: those of the packets ffmpeg shows


def list_packets(path: str | os.PathLike[str], index: int) -> Packets:
    """The key packet count and the frames' presentation times of the video stream ``index``, from one listing
    of its packets by the demuxer (nothing is decoded)."""
    proc = run_tool(
        [
            FFPROBE, "-v", "error", "-select_streams", str(index), "-show_entries", "packet=pts_time,flags",
            "-of", "csv=p=0", "--", os.fspath(path),
        ]
    )  # fmt: skip
    if proc.returncode != 0:
        raise MediaError(f"ffprobe cannot read this file: {_last_lines(proc.stderr, path)}")
    if proc.stderr.strip():
        # ffprobe stops listing at the first unreadable byte ("partial file"): a count of what it managed to
        # list would silently describe only part of the video.
        raise MediaError(f"video is damaged or truncated: {_last_lines(proc.stderr, path)}")
    count, times = 0, []
    for line in proc.stdout.decode("ascii", "replace").splitlines():
        pts, _, flags = line.rpartition(",")
        count += "K" in flags
        # "D": a packet decoded only to reach the frames after it (cut by an edit list), never shown; "N/A": a
        # packet without a presentation time.
        if "D" not in flags and pts != "N/A":
            times.append(float(pts))
    if not count:
        probe(path)  # says "no video stream" when that is the reason
        raise MediaError("video stream has no keyframe packets")
    return Packets(count, sorted(times))


def read_keyframes(path: str | os.PathLike[str], consume: Callable[[bytes], object]) -> int:
    """Pass the payloads of the main video stream's key packets, in stream order and as the demuxer returns
    them (H.264/HEVC made canonical by ``CANONICAL_BSF``), to ``consume`` in chunks; returns how many packets.

    One ffmpeg process copies the stream twice: the payloads, concatenated, to a pipe, and a line per packet
    (``framecrc``: size and Adler-32) to a file, which gives the count and proves the pipe carried every byte.
    """
    info = probe(path)
    bsf = ",".join(["noise=drop=not(key)", *([CANONICAL_BSF[info.codec]] if info.codec in CANONICAL_BSF else [])])
    copy = ["-map", f"0:{info.index}", "-c", "copy", "-bsf:v", bsf]
    with tempfile.TemporaryDirectory(prefix="cl_ml_tools_keyframes_") as tmp:
        listing, errors = Path(tmp) / "packets.txt", Path(tmp) / "stderr.txt"
        args = [FFMPEG, "-nostdin", "-v", "error", "-i", os.fspath(path), *copy, "-f", "data", "pipe:1"]
        args += [*copy, "-f", "framecrc", os.fspath(listing)]
        with errors.open("wb") as err, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err) as proc:
            timed_out = threading.Event()
            timer = threading.Timer(TIMEOUT_S, lambda: (timed_out.set(), proc.kill()))
            timer.start()
            try:
                total = 0
                assert proc.stdout is not None
                while chunk := proc.stdout.read(CHUNK):
                    consume(chunk)
                    total += len(chunk)
                returncode = proc.wait()
            finally:
                timer.cancel()
        stderr = errors.read_bytes()
        if timed_out.is_set():
            raise MediaError(f"{Path(FFMPEG).name} took longer than {TIMEOUT_S:.0f} s")
        if returncode != 0:
            raise MediaError(f"ffmpeg cannot read this file: {_last_lines(stderr, path)}")
        if stderr.strip():
            # ffmpeg stops at the first unreadable byte ("partial file") and still exits 0: a hash of what it
            # managed to read would silently describe only part of the video.
            raise MediaError(f"video is damaged or truncated: {_last_lines(stderr, path)}")
        sizes = [int(line.split(",")[4]) for line in listing.read_text("ascii").splitlines() if line[:1].isdigit()]
    if not sizes:
        raise MediaError("video stream has no keyframe packets")
    if sum(sizes) != total:
        raise MediaError(f"ffmpeg listed {sum(sizes)} bytes of keyframe packets but passed {total}")
    return len(sizes)


def fitted_size(display: tuple[int, int], box: int) -> tuple[int, int]:
    """The displayed size (``VideoInfo.oriented_size``) fitted inside box×box, never enlarged, both sides even.

    The size comes from probe, not from ffmpeg's ``dar`` in the filter: after autorotation ffmpeg inverts
    the sample aspect ratio and stretches the other side, which gives the same shape at another size
    (a 333x199 frame of SAR 796:999 turned 90° is 199x265 as players show it, 250x333 by ffmpeg's ``dar``)."""
    scale = min(1.0, box / display[0], box / display[1])
    width, height = (max(2, int(side * scale + 1e-6) // 2 * 2) for side in display)
    return width, height


def fit_filter(display: tuple[int, int], box: int) -> str:
    """An ffmpeg scale filter turning the (already rotated) frame into its displayed size fitted in box×box,
    in square pixels."""
    width, height = fitted_size(display, box)
    return f"scale={width}:{height},setsar=1"


def matrix_filter(info: VideoInfo) -> str:
    """For a stream that does not say which Y'CbCr matrix it uses, a filter (to put ahead of the first scale)
    naming the one players assume: BT.709 for HD sizes (1280 wide or more, or taller than 576), else BT.601,
    mpv's rule, the same in VLC and Kodi. ffmpeg's own default is BT.601 at every size, which turned an
    untagged 720p clip's red (200, 30, 30) into (184, 11, 31) in its previews. Also tags HLS renditions, so that
    a lower rung of SD size is not read with the other matrix. Empty where the stream says it (or for HDR,
    which ``sdr_filter`` converts)."""
    stream = info.stream
    if stream.get("color_space") not in (None, "unknown") or stream.get("color_transfer") in HDR_TRANSFERS:
        return ""
    hd = info.width >= 1280 or info.height > 576
    return f"setparams=colorspace={'bt709' if hd else 'smpte170m'},"


# ffprobe's field_order of interlaced video (DV, AVCHD's 1080i, broadcast recordings): each frame holds two
# fields sampled a field apart, which, shown as one picture, comb every moving edge (and scaled, ghost).
INTERLACED = ("tt", "bb", "tb", "bt")


def deinterlace_filter(info: VideoInfo, *, keyframes_only: bool = False) -> str:
    """For interlaced video, a filter (ahead of the first scale) that makes each frame one picture: bwdif, which
    fills each frame's second field from its first and the neighbouring frames, one picture per frame; for a
    stream decoded at keyframes only, whose neighbours are seconds away, the top field alone (the sheet's tiles
    are smaller than a field). Frames not flagged interlaced pass unchanged. Empty for progressive video."""
    if info.stream.get("field_order") not in INTERLACED:
        return ""
    return "field=type=top," if keyframes_only else "bwdif=mode=send_frame:parity=auto:deint=interlaced,"


# The transfer functions of HDR video (ffprobe's color_transfer): PQ (HDR10, Dolby Vision 8.1) and HLG (phones,
# broadcast). Their code values mean light levels an SDR decode does not reproduce: shown as BT.709, PQ's
# reference white comes out at 58 % grey and HLG's pictures grey and washed out.
HDR_TRANSFERS = ("smpte2084", "arib-std-b67")
# ITU-R BT.2408's reference (diffuse) white: 203 cd/m² becomes SDR's 100 % white, so that faces and paper keep
# their SDR brightness and only highlights above it are compressed.
HDR_REFERENCE_WHITE = 203


def sdr_filter(info: VideoInfo) -> str:
    """Filters (to append after scaling, so the float maths runs on the small frame) that tone-map an HDR main
    stream to SDR BT.709 as a display shows SDR (BT.1886): light up to 0.8 of reference white exactly, brighter
    light rolled off (Möbius) towards white, hues kept (``desat=0``). Empty for SDR video.

    HLG gets ``agamma=0``: zscale's default approximate gamma applies HLG's system gamma to each channel, not
    to the luminance as BT.2100's OOTF does, which lightens saturated colours (a blue of 0.5 came out at 234,
    not 191). PQ keeps the approximation, a lookup table that measured within a level of the exact curve and
    saves a quarter of an HDR HLS encode."""
    stream = info.stream
    transfer = stream.get("color_transfer")
    if transfer not in HDR_TRANSFERS:
        return ""
    _require_zscale()
    primaries = stream.get("color_primaries") or "bt2020"
    matrix = stream.get("color_space") or "bt2020nc"
    full = stream.get("color_range") == "pc"
    exact = ":agamma=0" if transfer == "arib-std-b67" else ""
    return (f",zscale=tin={transfer}:pin={primaries}:min={matrix}:rin={'full' if full else 'limited'}"
            f":t=linear:npl={HDR_REFERENCE_WHITE}{exact},format=gbrpf32le,zscale=p=bt709,"
            "tonemap=tonemap=mobius:param=0.8:desat=0,zscale=t=bt709:m=bt709:r=limited,format=yuv420p")  # fmt: skip


@functools.cache
def _has_zscale() -> bool:
    proc = run_tool([FFMPEG, "-hide_banner", "-filters"])
    return any(line.split()[1:2] == ["zscale"] for line in proc.stdout.decode("utf-8", "replace").splitlines())


def _require_zscale() -> None:
    if not _has_zscale():
        raise MediaError(f"HDR video needs ffmpeg's zscale filter (libzimg) to be shown as SDR; {FFMPEG} has none")


def seek_positions(times: Sequence[float], frames: Sequence[float], start: float) -> list[float]:
    """For each time (seconds from the file's start), an input-side seek position whose first frame, the first at
    or after it, is the frame on screen at that time: the last one shown at or before it (pts <= t < next pts).
    A seek to the time itself would give the next frame instead, late by up to a frame's duration, and none at
    all past the last frame's start. The position lies midway between that frame and the one before, so the
    microsecond rounding of ffprobe's times does not matter. Without frame times, the time itself."""
    positions = []
    for t in times:
        shown = bisect.bisect_right(frames, start + t + 1e-6) - 1
        if not frames:
            positions.append(t)
        elif shown <= 0:
            positions.append(0.0)
        else:
            positions.append(max(0.0, (frames[shown - 1] + frames[shown]) / 2 - start))
    return positions


def extract_frames(
    path: str | os.PathLike[str], info: VideoInfo, frames: Sequence[float], times: list[float], box: int,
    out_dir: Path,
) -> list[Path | None]:  # fmt: skip
    """Decode the frame on screen at each time (seconds; ``frames``: the stream's frame times, see
    ``seek_positions``) in a single ffmpeg process, scaled to fit ``box``, HDR tone-mapped to SDR.

    Each time gets its own input with an input-side seek, so only the stretch from the preceding keyframe
    is decoded. Returns one BMP path per time, or None where the stream had no frame there.
    """
    args = [FFMPEG, "-nostdin", "-v", "error", "-y"]
    for position in seek_positions(times, frames, info.start):
        args += ["-ss", f"{position:.6f}", "-i", os.fspath(path)]
    outputs = [out_dir / f"frame{i:03d}.bmp" for i in range(len(times))]
    vf = matrix_filter(info) + deinterlace_filter(info) + fit_filter(info.oriented_size, box) + sdr_filter(info)
    for i, out in enumerate(outputs):
        args += ["-map", f"{i}:{info.index}", "-frames:v", "1", "-vf", vf,
                 "-pix_fmt", "bgr24", os.fspath(out)]  # fmt: skip
    proc = run_tool(args)
    found = [out if out.exists() and out.stat().st_size > 0 else None for out in outputs]
    if not any(found):
        raise MediaError(f"ffmpeg could not decode any frame: {_last_lines(proc.stderr)}")
    return found


def contact_sheet(
    path: str | os.PathLike[str], info: VideoInfo, n_keyframes: int, tile_width: int, grid: int, out: Path
) -> Path:
    """A grid×grid sheet of evenly spaced keyframes of the main video stream, decoding keyframes only
    (``-skip_frame nokey``), each tile_width wide at the displayed aspect ratio."""
    cells = grid * grid
    step = max(1, n_keyframes / cells)
    picks = sorted({int(i * step) for i in range(min(cells, n_keyframes))})
    select = "+".join(f"eq(n\\,{n})" for n in picks)
    rows = -(-len(picks) // grid)  # a short video gets a shorter sheet, not rows of black
    width, height = info.oriented_size
    tile_height = max(2, round(tile_width * height / width / 2) * 2)
    vf = (f"select='{select}',{matrix_filter(info)}{deinterlace_filter(info, keyframes_only=True)}"
          f"scale={tile_width}:{tile_height},setsar=1{sdr_filter(info)},tile={grid}x{rows}")  # fmt: skip
    proc = run_tool(
        [
            FFMPEG, "-nostdin", "-v", "error", "-y", "-skip_frame", "nokey", "-i", os.fspath(path),
            "-map", f"0:{info.index}", "-vf", vf, "-frames:v", "1", "-fps_mode", "vfr", "-pix_fmt", "bgr24",
            os.fspath(out),
        ]
    )  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        raise MediaError(f"ffmpeg could not build the contact sheet: {_last_lines(proc.stderr)}")
    return out
