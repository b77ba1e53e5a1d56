"""Word recall of the ocr step against rapidocr's defaults on real images with text (benchmarks/data/ocr/:
photos of street signs, a scanned page, tight word and line crops of public OCR test sets; truth.json gives
each file's words, source and licence).

Ours is the pipeline's path: the thumbnails step's preview of the file, then steps/ocr.py on it
(``plugins.ocr.run``, the schema's ocr defaults). The library's is ``rapidocr.RapidOCR()`` with its own
defaults on the original file. A ground-truth word counts once per occurrence; it is found when the
recognised text holds it as a word as often (case and accents folded, apostrophes dropped, split at anything
but a letter or digit).

    .venv/bin/python benchmarks/bench_ocr_accuracy.py [--option KEY=VALUE ...]
"""

import argparse
import collections
import json
import re
import tempfile
import unicodedata
from pathlib import Path

from cl_ml_tools import plugins

DATA = Path(__file__).parent / "data" / "ocr"


def words(text: str) -> collections.Counter[str]:
    folded = unicodedata.normalize("NFKD", text.casefold().replace("'", "").replace("’", ""))
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return collections.Counter(re.findall(r"[^\W_]+", folded))


def recall(truth: collections.Counter[str], read: list[str]) -> tuple[int, int]:
    found = truth & words(" ".join(read))
    return sum(found.values()), sum(truth.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--option", action="append", default=[], help="an ocr config key for our step, KEY=VALUE")
    args = parser.parse_args()
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    from rapidocr import RapidOCR

    library = RapidOCR(params={"Global.log_level": "error"})
    truth = json.loads((DATA / "truth.json").read_text())
    totals: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    with tempfile.TemporaryDirectory() as tmp:
        for n, image in enumerate(truth["images"]):
            path = (DATA / image["file"]).resolve()
            want = words(image["words"])
            rows = plugins.ocr.run(path, out=Path(tmp) / str(n), **options)
            ours = [t for t in rows.text if isinstance(t, str)]
            theirs = list(library(str(path)).txts or ())
            cells = []
            for who, read in (("ours", ours), ("library", theirs)):
                found, total = recall(want, read)
                totals[image["kind"], who][0] += found
                totals[image["kind"], who][1] += total
                cells.append(f"{found}/{total}")
            print(
                f"| {path.name} | {image['kind']} | {' | '.join(cells)} | {' / '.join(ours)} | {' / '.join(theirs)} |"
            )
    for (kind, who), (found, total) in sorted(totals.items()):
        print(f"{kind:6s} {who:8s} recall {found}/{total} = {found / total:.2f}")


if __name__ == "__main__":
    main()
