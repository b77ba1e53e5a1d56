"""The ``cl-ml-tools`` command: the pipeline (``run``), the model cache (``models list|fetch|verify``), ``search``
and ``serve``.

Each top-level command is added by one function in ``COMMANDS`` that registers its subparser and sets
``func`` on the leaf parsers; ``func(args)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__, models, pipeline, search
from .models import ModelError, Resolved
from .service import service_config

PROG = "cl-ml-tools"
DEFAULT_CONFIG = "config.yaml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake on the command line or in the config file (exit status 2)."""


def load_config(path: str | None) -> dict[str, Any]:
    """The workflow config named by ``--config``, else ``config.yaml`` in the working directory if there is
    one, else an empty config."""
    if path is None:
        if not Path(DEFAULT_CONFIG).is_file():
            return {}
        path = DEFAULT_CONFIG
    try:
        return service_config.read(path)
    except service_config.ConfigError as exc:
        raise UsageError(str(exc)) from None


def overrides(args: argparse.Namespace) -> dict[str, Path]:
    config = load_config(args.config)
    try:
        return models.overrides_from_config(config)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def _model_ids(given: list[str]) -> list[str]:
    unknown = [i for i in given if i not in models.REGISTRY]
    if unknown:
        raise UsageError(f"unknown model id(s) {', '.join(unknown)}; known ids: {', '.join(models.REGISTRY)}")
    return list(dict.fromkeys(given)) or list(models.REGISTRY)


def _size(spec: models.ModelSpec) -> str:
    sizes = [f.size for f in spec.files]
    if any(s is None for s in sizes):
        return "?"
    return f"{sum(s for s in sizes if s is not None) / 1e6:.1f} MB"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


# --------------------------------------------------------------------------------------------------- models


def cmd_models_list(args: argparse.Namespace) -> int:
    over = overrides(args)
    rows = [["ID", "RUNTIME", "SIZE", "LICENCE", "STATE", "PATH"]]
    restricted = []
    for model_id, spec in models.REGISTRY.items():
        state, path = models.cache_state(model_id, over)
        licence = spec.licence + (" (*)" if spec.notice else "")
        if spec.notice:
            restricted.append(model_id)
        rows.append([model_id, spec.runtime, _size(spec), licence, state, str(path)])
    print(_table(rows))
    if restricted:
        print(f"\n(*) restricted licence, read docs/models.md before use: {', '.join(restricted)}")
    print(f"cache: {models.cache_dir()}")
    return EXIT_OK


def _each_model(ids: list[str], action: Callable[[str], Resolved]) -> int:
    """Run ``action`` on each model, printing one line per model; returns how many failed."""
    failed = 0
    for model_id in ids:
        try:
            resolved = action(model_id)
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        source = "override" if resolved.override else "cached"
        print(f"ok  {model_id}  {source}  sha256:{resolved.sha256}  {resolved.path}")
    return failed


def cmd_models_fetch(args: argparse.Namespace) -> int:
    ids = _model_ids(args.ids)
    over = overrides(args)
    failed = _each_model(ids, lambda model_id: models.fetch(model_id, over, progress=not args.no_progress))
    if failed:
        print(f"{failed} of {len(ids)} model(s) could not be fetched", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_models_verify(args: argparse.Namespace) -> int:
    over = overrides(args)
    ids = _model_ids(args.ids)
    if not args.ids:
        for model_id in [m for m in ids if models.cache_state(m, over)[0] == "missing"]:
            print(f"skip  {model_id}  missing (not fetched)")
            ids.remove(model_id)
    failed = _each_model(ids, lambda model_id: models.verify(model_id, over))
    if failed:
        print(f"{failed} of {len(ids)} model(s) failed verification", file=sys.stderr)
    elif not ids:
        print("no model is in the cache; run `cl-ml-tools models fetch`")
    return EXIT_FAILED if failed else EXIT_OK


MODELS_HELP = (
    "The ML models the steps use, in the model cache ($CL_ML_TOOLS_MODEL_CACHE, else ~/.cache/cl_ml_tools/models): "
    "list every registered model and its state there, fetch the missing ones (each checked against its pinned "
    "sha256), verify the cached files again. Run `cl-ml-tools models ACTION --help` for an action's options."
)


def add_models(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("models", help="list, download and verify the ML models", description=MODELS_HELP)
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", parents=[common], help="every registered model and its state in the cache")
    p.set_defaults(func=cmd_models_list)
    p = sub.add_parser("fetch", parents=[common], help="download models that are missing or fail verification")
    p.add_argument("ids", nargs="*", metavar="ID", help="model ids (default: every model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_models_fetch)
    p = sub.add_parser("verify", parents=[common], help="re-hash cached models against their pins")
    p.add_argument("ids", nargs="*", metavar="ID", help="model ids (default: every cached model)")
    p.set_defaults(func=cmd_models_verify)


def cmd_search(args: argparse.Namespace) -> int:
    """find files by text (MobileCLIP, and the words in them), or by an example file (DINOv2)

    Prints score, path and thumbnail path of the best matches, best first, tab-separated; where the words
    in the pictures are searched too (an ocr table exists, or --text), a fourth column says why each file
    matched: "clip", "text: <the line that matched>", or both."""
    if not args.like and not args.query:
        raise UsageError('search needs words to look for ("a dog on a beach") or --like PATH')
    if args.like and args.text:
        raise UsageError("search takes --like or --text, not both")
    over = overrides(args)
    config = load_config(args.config)
    query = " ".join(args.query)
    try:
        if args.like:
            preview = (config.get("thumbnails") or {}).get("preview_size", 1024)
            hits = search.by_example(args.results, args.like, args.top, over, preview_size=preview)
        elif args.text:
            hits = search.by_words(args.results, query, args.top)
        else:
            hits = search.by_text_and_words(args.results, query, args.top, over)
    except search.SearchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    with_why = not args.like and (args.text or (Path(args.results) / "tables" / "ocr.parquet").exists())
    for hit in hits:
        print(f"{hit.score:.4f}\t{hit.path}\t{hit.thumbnail or '-'}" + (f"\t{hit.why}" if with_why else ""))
    return EXIT_OK


def _command(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """The parser of a top-level command without actions of its own (``search``, ``serve``): named after
    ``cmd_<name>``, its help the docstring's first line, its description the rest."""
    summary, _, description = (func.__doc__ or "").strip().partition("\n\n")
    name = func.__name__.removeprefix("cmd_")
    parser = commands.add_parser(name, parents=[common], help=summary, description=" ".join(description.split()))
    parser.set_defaults(func=func)
    return parser


def add_search(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = _command(commands, common, cmd_search)
    parser.add_argument("query", nargs="*", help='words to look for, e.g. "a dog on a beach"')
    parser.add_argument("--like", metavar="PATH", help="find files that look like this one instead")
    parser.add_argument(
        "--text",
        action="store_true",
        help="only the words in the pictures (the ocr table): case and accents ignored, one wrong letter per "
        "word of 4 letters or more forgiven",
    )
    parser.add_argument("--results", default="results", help="the pipeline's results directory")
    parser.add_argument("--top", type=int, default=20, help="how many files to show")


def cmd_serve(args: argparse.Namespace) -> int:
    """run the HTTP service (docs/service.md)

    Serves cl_ml_tools.master:app with uvicorn; settings from the config's server section."""
    try:
        config = service_config.load(args.config)
    except service_config.ConfigError as exc:
        raise UsageError(str(exc)) from None
    try:
        import uvicorn
    except ImportError:
        raise UsageError("the service needs its extra dependencies: pip install -e '.[service]'") from None
    server = config.server
    # The app reads its config when it starts, in every worker process: hand it the same file.
    os.environ[service_config.CONFIG_ENV] = str(config.path)
    uvicorn.run(
        "cl_ml_tools.master:app",
        host=args.host or server["host"],
        port=args.port or server["port"],
        workers=args.workers or server["workers"],
        log_level=server["log_level"],
        # Past this many connections uvicorn answers 503 instead of running out of file descriptors.
        limit_concurrency=server["max_connections"],
        timeout_keep_alive=server["keep_alive_seconds"],
        # Requests waiting for a job (?wait=) would otherwise hold a stop up for as long as they wait.
        timeout_graceful_shutdown=5,
    )
    return EXIT_OK


def add_serve(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = _command(commands, common, cmd_serve)
    parser.add_argument("--host", help="address to listen on (default: server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (default: server.port)")
    parser.add_argument("--workers", type=int, help="server processes (default: server.workers)")


def cmd_run(args: argparse.Namespace) -> int:
    """run the pipeline: the photos and videos in FOLDERs → Parquet tables under results/

    Snakemake on the workflow this package carries, in the working directory, with its progress as Snakemake
    prints it; run it again to resume or to take in new files. Each FOLDER is an input named after the folder
    (NAME=FOLDER names it yourself; the name is part of every file's media_id); without FOLDERs, the inputs of
    --config FILE or ./config.yaml. The config a run used is written to RESULTS/run-config.yaml. Arguments
    after -- go to snakemake (e.g. -- --dry-run, -- --unlock)."""
    try:
        config = pipeline.run_config(args.paths, args.config, args.results)
        argv = pipeline.command(config, args.cores, args.report, args.snakemake_args)
    except pipeline.PipelineError as exc:
        raise UsageError(str(exc)) from None
    return pipeline.run(argv)


def add_run(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = _command(commands, common, cmd_run)
    parser.add_argument("paths", nargs="*", metavar="FOLDER", help="folders to process (NAME=FOLDER to name one)")
    parser.add_argument("--results", metavar="DIR", help="where the tables go (default: the config's, ./results)")
    parser.add_argument("--cores", type=int, metavar="N", help="cores to use (default: all)")
    parser.add_argument("--report", metavar="FILE", help="also write the HTML report to FILE")
    parser.set_defaults(snakemake_args=[])  # what follows --, set by parse()


# Each entry registers one top-level command: (subparsers, parent parser holding the shared options).
COMMANDS: list[Callable[[argparse._SubParsersAction, argparse.ArgumentParser], None]] = [
    add_run,
    add_models,
    add_search,
    add_serve,
]


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command; SUPPRESS keeps a leaf's unset default from hiding a
    # value given at the top level.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    parser = argparse.ArgumentParser(prog=PROG, description="cl_ml_tools utilities")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="FILE", default=None, help=_CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands, common)
    return parser


_CONFIG_HELP = f"workflow config whose `models:` section overrides model paths (default: {DEFAULT_CONFIG} if present)"


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; for `run`, what follows the first ``--`` is snakemake's (``snakemake_args``)."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if args.command == "run":
            args.snakemake_args = argv[cut + 1 :]
            return args
    return parser.parse_args(argv)


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{PROG}: {self.format(record)}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logger = logging.getLogger("cl_ml_tools")
    handler = _Stderr(logging.WARNING)
    logger.addHandler(handler)
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
