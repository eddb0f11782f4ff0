"""Evaluation records: one JSON file per (attack, budget, norm, eps) in ``RUN/evaluations/``.

``pellucid evaluate`` and ``pellucid demo`` write them; reports read them all, so a run's report
shows every attack evaluated on it, not only the latest.
"""

from __future__ import annotations

import json
from pathlib import Path

from pellucid._io import save_json_atomic
from pellucid.robust.evaluate import RobustnessResult

RECORDS_DIR = "evaluations"


def record_name(summary: dict) -> str:
    """File stem of a record, e.g. ``autoattack-standard-linf-eps0.3``."""
    budget = f"-{summary['budget']}" if "budget" in summary else ""
    return f"{summary['attack']}{budget}-{summary['norm']}-eps{summary['eps']:g}"


def save_record(run_dir: Path | str, summary: dict, result: RobustnessResult, *,
                eps_points: dict | None = None, minimal: dict | None = None) -> Path:
    """Write ``summary`` with the reliability curve (and, if given, the accuracy-vs-eps points
    ``{"points", "n"}`` and the minimal-perturbation norms) atomically; returns the path."""
    record = {"summary": summary, "reliability": result.reliability.to_dict()}
    if eps_points is not None:
        record["accuracy_vs_eps"] = eps_points
    if minimal is not None:
        record["minimal"] = minimal
    path = Path(run_dir) / RECORDS_DIR / f"{record_name(summary)}.json"
    save_json_atomic(path, record)
    return path


def load_records(run_dir: Path | str) -> list[dict]:
    """Every record of the run, in file-name order (skipping unreadable files)."""
    out = []
    for p in sorted((Path(run_dir) / RECORDS_DIR).glob("*.json")):
        try:
            out.append({"name": p.stem, **json.loads(p.read_text())})
        except (OSError, ValueError):
            continue
    return out
