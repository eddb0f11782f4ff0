"""The evaluation records of trained runs, collected into one results line per run directory.

``pellucid evaluate DIR ...`` writes one JSON record per evaluation to ``DIR/evaluations/`` (the
attack, its options, eps, seed, number of images, the weights' SHA-256 and every figure). This
collects the records of the given run directories, without the reliability curves' points, so
the README and the docs can render their tables from ``results/evaluations.jsonl``. It measures
nothing itself: each row carries the command that reproduces it, and the environment recorded
with the line is the collector's (records written before evaluations recorded their own
environment do not say where they were measured).

``python -m benchmarks evaluations runs/wb314 runs/wb10-cos ...``
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "The evaluation records (pellucid evaluate) of run directories, collected for the docs' tables"
EXPECTED_TIME = "under 1 s (reads records; the evaluations themselves take seconds to hours, see each row)"

# record fields that are not figures of the evaluation (kept out of the collected row)
DROPPED = ("reliability", "eps_points", "per_image", "broken_by")


def parser():
    p = h.parser(__name__, __doc__)
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories holding evaluations/*.json")
    return p


def _defaults(options_type: type) -> dict:
    """``{option: default}`` of an options dataclass, sequences as lists (as JSON holds them)."""
    import dataclasses

    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(options_type) if f.default is not dataclasses.MISSING}


def _flags(options: dict, defaults: dict) -> list[str]:
    """``pellucid evaluate`` flags of the options that differ from ``defaults`` (``None``: the
    attack's own default, left out)."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or (key in defaults and defaults[key] == value):
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def command(summary: dict, run: str) -> str:
    """The command that reproduces a record: ``pellucid evaluate`` with the record's attack, its
    options, eps, norm, number of images, seed and chunking (under ``torchrun`` for several
    processes)."""
    from pellucid.robust import ATTACKS, AdaptiveBudget

    options = dict(summary.get("options") or {})
    budget = options.pop("budget", None)
    parts = ["pellucid", "evaluate", run, "--attack", str(summary["attack"])]
    if isinstance(budget, dict):  # the adaptive cascade: its name, then its own options
        parts += ["--budget", str(summary.get("budget", "adaptive")), *_flags(budget, _defaults(AdaptiveBudget))]
    elif budget is not None:
        parts += ["--budget", str(budget)]
    parts += _flags(options, _defaults(ATTACKS.get(summary["attack"]).options)) + ["--eps", f"{summary['eps']:g}", "--limit", str(summary["n"])]
    if summary.get("norm", "linf") != "linf":
        parts += ["--norm", str(summary["norm"])]
    if summary.get("seed"):
        parts += ["--seed", str(summary["seed"])]
    if summary.get("chunk_size"):
        parts += ["--chunk-size", str(summary["chunk_size"])]
    processes = summary.get("processes") or 1
    if processes > 1:
        parts = ["torchrun", "--nproc-per-node", str(processes), "-m", "pellucid", *parts[1:]]
    return shlex.join(parts + ["--json"])


def collect(run: Path) -> list[dict]:
    """One row per record in ``run/evaluations``, in name order."""
    records = sorted((run / "evaluations").glob("*.json"))
    if not records:
        raise SystemExit(f"python -m benchmarks evaluations: no evaluation records in {run}/evaluations")
    rows = []
    for path in records:
        summary = json.loads(path.read_text()).get("summary", {})
        row = {k: v for k, v in summary.items() if k not in DROPPED}
        row.update(run=run.name, record=path.name, command=command(summary, str(run)))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = h.parse(parser(), argv)
    return [{"run": Path(r).name, "evaluations": collect(Path(r))} for r in args.runs]


if __name__ == "__main__":
    h.script(__name__)
