"""Two AutoAttack evaluations of the same weights and images, compared image by image.

Reads two records that ``pellucid evaluate DIR --attack autoattack --budget B`` wrote to
``DIR/evaluations/`` (for example the all-native ``native-standard`` budget and ART's
``standard`` or ``standard-native``), checks that they attacked the same weights (SHA-256), the
same number of images, eps and norm, and prints ONE JSON line: each record's robust accuracy,
stages and attack seconds, the difference in points, and the test-set positions of the images
that only one of them broke. It measures nothing itself; the records carry their own timings.

    python -m benchmarks budget_agreement runs/wb314-avx2 native-standard standard-native
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Two AutoAttack budgets' evaluation records of the same weights, compared image by image"
EXPECTED_TIME = "under 1 s (reads records; the evaluations themselves take minutes to hours)"

# what must be equal for two records to be comparable image by image
SAME = ("weights_sha256", "n", "eps", "norm", "dataset")


def parser():
    p = h.parser(__name__, __doc__)
    p.add_argument("run", metavar="DIR", help="run directory holding evaluations/*.json")
    p.add_argument("budgets", nargs=2, metavar="BUDGET", help="the two AutoAttack budgets to compare")
    p.add_argument("--n", type=int, default=None, help="the records of this many images (default: the largest)")
    return p


def find_record(run: Path, budget: str, n: int | None) -> tuple[Path, dict]:
    """The newest ``autoattack`` record of ``budget`` in ``run/evaluations`` (of ``n`` images, else
    the largest ``n``)."""
    found = []
    for path in sorted((run / "evaluations").glob("*.json")):
        record = json.loads(path.read_text())
        s = record.get("summary", {})
        if s.get("attack") == "autoattack" and s.get("budget") == budget and (n is None or s.get("n") == n):
            found.append((s["n"], path.stat().st_mtime, path, record))
    if not found:
        raise SystemExit(f"python -m benchmarks budget_agreement: no autoattack record of budget {budget!r}"
                         f"{'' if n is None else f' on {n} images'} in {run}/evaluations")
    _, _, path, record = max(found, key=lambda t: (t[0], t[1]))
    return path, record


def compare(a: dict, b: dict) -> dict:
    """Images robust under one record and broken under the other (0-based test-set positions)."""
    sa, sb = a["summary"], b["summary"]
    for key in SAME:
        if sa.get(key) != sb.get(key):
            raise SystemExit(f"python -m benchmarks budget_agreement: the records differ in {key} "
                             f"({sa.get(key)!r} against {sb.get(key)!r}); nothing to compare image by image")
    ra, rb = a["per_image"]["robust"], b["per_image"]["robust"]
    only_a = [i for i, (x, y) in enumerate(zip(ra, rb)) if not x and y]  # broken by a only
    only_b = [i for i, (x, y) in enumerate(zip(ra, rb)) if x and not y]
    return {"broken_by_first_only": only_a, "broken_by_second_only": only_b,
            "difference_points": round(100 * (sa["robust_accuracy"] - sb["robust_accuracy"]), 2)}


def side(path: Path, record: dict) -> dict:
    s = record["summary"]
    stages = [{k: st.get(k) for k in ("attack", "attacked", "broken", "seconds")} for st in s.get("stages", [])]
    return {"record": path.name, "budget": s["budget"], "robust_accuracy": s["robust_accuracy"],
            "robust_images": sum(record["per_image"]["robust"]), "clean_accuracy": s["clean_accuracy"],
            "attack_seconds": round(sum(st["seconds"] or 0.0 for st in stages), 1), "stages": stages,
            "processes": s.get("processes", 1), "seed": s.get("seed")}


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    run = Path(args.run)
    first, second = (find_record(run, budget, args.n) for budget in args.budgets)
    return {"run": run.name, "n": first[1]["summary"]["n"], "eps": first[1]["summary"]["eps"],
            "weights_sha256": first[1]["summary"]["weights_sha256"],
            "first": side(*first), "second": side(*second), **compare(first[1], second[1])}


if __name__ == "__main__":
    h.script(__name__)
