"""Security: no shell anywhere, hostile file names are only names, nothing written outside results/ and the
model cache, YAML only through the safe loader."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, snakemake, write_config

from cl_ml_tools.data import tables

CODE = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "workflow").rglob("*.py"))]
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return f"{f.value.id}.{f.attr}"
    return f.id if isinstance(f, ast.Name) else ""


def test_no_shell_strings_anywhere() -> None:
    """Every external program is started from an argument list: no shell=True, no os.system/os.popen, no
    command given as one string."""
    problems = []
    for path in CODE:
        for call in _calls(path):
            name = _name(call)
            where = f"{path.relative_to(REPO)}:{call.lineno}"
            if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in call.keywords):  # fmt: skip
                problems.append(f"{where}: shell=")
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                problems.append(f"{where}: {name}")
            is_run = name.startswith("subprocess.") and name.split(".")[1] in SUBPROCESS_CALLS
            if is_run and call.args and isinstance(call.args[0], ast.Constant | ast.JoinedStr | ast.BinOp):
                problems.append(f"{where}: command given as a string")
    assert problems == []
    assert len(CODE) > 20  # the scan really looked at the code


def test_yaml_is_only_read_with_the_safe_loader() -> None:
    problems = []
    for path in CODE:
        for call in _calls(path):
            name = _name(call)
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(f"{path.relative_to(REPO)}:{call.lineno}: {name}")
            if name == "yaml.load" and not any(
                k.arg == "Loader" and "Safe" in ast.unparse(k.value) for k in call.keywords
            ):
                problems.append(f"{path.relative_to(REPO)}:{call.lineno}: yaml.load without SafeLoader")
    assert problems == []


HOSTILE = ["-rf.jpg", "$(touch PWNED).png", "--help.mp4", "a;b & c.jpg", "line\nbreak.jpg", "'quoted\".webp"]


@pytest.mark.e2e
def test_hostile_names_are_just_names_and_nothing_is_written_elsewhere(tmp_path: Path) -> None:
    work = tmp_path / "work"
    archive = work / "archive"
    archive.mkdir(parents=True)
    sources = {".jpg": "2021 holiday/astronaut.jpg", ".png": "2021 holiday/coffee.png",
               ".webp": "2021 holiday/chelsea the cat.webp", ".mp4": "videos/clip.mp4"}  # fmt: skip
    for name in HOSTILE:
        shutil.copy(SAMPLE / sources[Path(name).suffix], archive / name)
    write_config(work, {"photos": "archive"})
    home, tmpdir, cache = tmp_path / "home", tmp_path / "tmp", tmp_path / "cache"
    for d in (home, tmpdir, cache):
        d.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    snakemake(work, env={"HOME": str(home), "TMPDIR": str(tmpdir), "CL_ML_TOOLS_MODEL_CACHE": str(cache),
                         "XDG_CACHE_HOME": str(home / ".cache")})  # fmt: skip

    results = work / "results"
    for step in ("files", "hashes", "exif", "thumbnails", "hls", "dino"):
        df = tables.load(step, results)
        names = {Path(p).name for p in df.path}
        assert names == set(HOSTILE if step != "hls" else ["--help.mp4"]), step
        assert (df.status == "ok").all(), (step, df[df.status != "ok"][["path", "error"]])
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()

    written = {p for p in tmp_path.rglob("*") if p not in before and not p.is_dir()}
    allowed = (results, work / ".snakemake", cache, home / ".cache" / "snakemake")
    outside = sorted(str(p.relative_to(tmp_path)) for p in written if not any(p.is_relative_to(a) for a in allowed))
    assert outside == [], outside
    assert list(tmpdir.iterdir()) == []  # every temporary file and folder was removed
