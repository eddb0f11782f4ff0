"""Evaluation records: one JSON file per evaluation in ``RUN/evaluations/``.

``pellucid evaluate`` and ``pellucid demo`` write them; reports read them all, so a run's report
shows every evaluation of the run, not only the latest.

A record is identified by everything that changes what it holds: the attack and its options,
the threat model, the seed, the test images (how many), the weights evaluated and the images its
gradient-masking checks ran on (:func:`record_identity`). Two evaluations that differ in any of these are kept side by side (a
20-image check never replaces the full test set's figure); only the same evaluation run again
replaces its own record. The budget is part of the identity and of the file name
(``autoattack-standard-...``, ``autoattack-adaptive-...``), so an adaptive-budget record never
replaces a standard one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pellucid._io import save_json_atomic
from pellucid.robust.evaluate import RobustnessResult

RECORDS_DIR = "evaluations"
# summary keys that identify an evaluation (see the module docstring)
IDENTITY_KEYS = ("attack", "budget", "norm", "eps", "options", "seed", "n", "dataset", "weights_sha256",
                 "checked_images", "chunk_size")


def record_identity(summary: dict) -> dict:
    """The summary's identifying keys. ``chunk_size`` is in a summary only when it is not the
    default; the device counts by its kind (``cuda``, ``mps``) only when it is not the CPU, whose
    arithmetic the records written before devices were recorded used. The number of processes
    does not count: it does not change the results."""
    identity = {k: summary[k] for k in IDENTITY_KEYS if k in summary}
    kind = str(summary.get("device", "cpu")).split(":")[0]
    if kind != "cpu":
        identity["device"] = kind
    return identity


def record_name(summary: dict) -> str:
    """File stem of a record: readable settings and a digest of its whole identity, e.g.
    ``autoattack-standard-linf-eps0.3-n1902-3f9c0a1b2d``."""
    budget = f"-{summary['budget']}" if "budget" in summary else ""
    digest = hashlib.sha256(json.dumps(record_identity(summary), sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    return f"{summary['attack']}{budget}-{summary['norm']}-eps{summary['eps']:g}-n{summary['n']}-{digest}"


def save_record(run_dir: Path | str, summary: dict, result: RobustnessResult, *,
                eps_points: dict | None = None, minimal: dict | None = None,
                per_image: dict | None = None) -> Path:
    """Write ``summary`` with the reliability curve (and, if given, the accuracy-vs-eps points
    ``{"points", "n"}``, the minimal-perturbation norms and per-image lists such as the adaptive
    budget's ``{"broken_by": [stage or None, ...]}``) atomically; returns the path."""
    record = {"summary": summary, "reliability": result.reliability.to_dict()}
    if eps_points is not None:
        record["accuracy_vs_eps"] = eps_points
    if minimal is not None:
        record["minimal"] = minimal
    if per_image is not None:
        record["per_image"] = per_image
    path = Path(run_dir) / RECORDS_DIR / f"{record_name(summary)}.json"
    save_json_atomic(path, record)
    return path


def load_records(run_dir: Path | str) -> list[dict]:
    """Every record of the run, in file-name order (skipping unreadable files)."""
    out = []
    for p in sorted((Path(run_dir) / RECORDS_DIR).glob("*.json")):
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("summary"), dict) and "reliability" in record:
            out.append({"name": p.stem, **record})
    return out
