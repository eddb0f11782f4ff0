"""One self-contained HTML report per run: figures embedded as data URIs, metrics, provenance.

The file needs nothing but a browser: no script, no font or style sheet from elsewhere. Figures
zoom on click with CSS alone (the clicked ``<figure>`` becomes the URL's ``:target`` and fills
the window), so every image is embedded once.
"""

from __future__ import annotations

import base64
import html
import json
import math
import platform
import shlex
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pellucid._io import save_bytes_atomic
from pellucid._text import duration
from pellucid.errors import PellucidError


@dataclass
class Figure:
    """A PNG with its caption. ``n``: how many images it is drawn from, named by ``n_of``; the
    report shows it beside the figure when it differs from the report's n (the headline
    evaluation's). ``wide``: span the full width (``None``: when the PNG is wider than half the
    page)."""

    png: Path
    caption: str
    n: int | None = None
    n_of: str = "test images"
    wide: bool | None = None


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[Figure | tuple[Path, str]] = field(default_factory=list)  # Figure or (png, caption)
    table: list[dict[str, Any]] | None = None
    table_beside: bool = False  # a narrow table shares the figures' grid instead of a row of its own


@dataclass
class Stat:
    """One number of the headline: ``value`` already formatted, ``note`` says what it was measured on."""

    label: str
    value: str
    note: str = ""


def environment() -> dict[str, str]:
    """Versions and hardware, recorded beside every result."""
    import pellucid

    return {"pellucid": pellucid.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads()),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def git_commit(where: Path | str | None = None, timeout: float = 2.0) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``where`` (default: pellucid's source), with
    `` (uncommitted changes)`` appended when tracked files differ from it; ``None`` outside a git
    checkout, for an installed copy (``site-packages``), without git, or when git takes longer
    than ``timeout`` seconds. Never raises: provenance must not fail a report."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    if "site-packages" in where.parts:  # a checkout around an installed copy is not its source
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=timeout, check=False)
        sha = head.stdout.strip()
        if head.returncode != 0 or not sha or any(c not in "0123456789abcdef" for c in sha):
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=where, capture_output=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return sha + (" (uncommitted changes)" if diff.returncode == 1 else "")


def run_facts() -> dict[str, Any]:
    """When, how and from which code a report is written: UTC time, command line, git commit."""
    return {"written (UTC)": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(sys.argv) if sys.argv and sys.argv[0] else None,
            "git commit": git_commit()}


# ----------------------------------------------------------------------------- formatting

# column names whose fractions are rates (shown as percentages) and which are durations
_RATE_WORDS = ("accuracy", "precision", "recall", "auc", "rate", "fraction", "gain")
_LABELS = {"precision_at_recall_0.8": "precision at 80 % recall",
           "precision_at_recall_0.8_ci95": "95 % interval", "reliability_auc": "reliability AUC",
           "seconds": "time", "train_seconds": "train time", "epoch_seconds": "epoch time",
           "val_pgd_accuracy": "val PGD accuracy", "n": "n"}


def percent(v: float, digits: int = 2) -> str:
    """``0.9253`` -> ``"92.53 %"`` (no-break space: the sign never wraps alone)."""
    return f"{v * 100:.{digits}f}\u00a0%"


def count(n: int) -> str:
    """An integer with thousands separators: ``10552`` -> ``"10,552"``."""
    return f"{n:,}"


def norm_label(norm: str | None) -> str:
    """``linf`` -> ``L-inf``, ``l2`` -> ``L2``: a threat model's norm as papers write it."""
    return {"linf": "L-inf", "l2": "L2", "l1": "L1"}.get(str(norm), str(norm))


def label(key: str) -> str:
    """A column name as a reader reads it: ``clean_accuracy`` -> ``clean accuracy``."""
    return _LABELS.get(key, key.replace("_", " "))


def _is_rate(key: str) -> bool:
    return any(w in key.lower() for w in _RATE_WORDS)


def _is_duration(key: str) -> bool:
    k = key.lower()
    return "seconds" in k or k.endswith("_time")


def format_value(key: str, v: Any) -> str:
    """``v`` as text by what column ``key`` holds: rates in [0, 1] as percentages, durations as
    human times, counts with thousands separators, eps as written; ``None`` and NaN as a dash."""
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) for x in v):
        return (" – " if key.endswith("ci95") else ", ").join(format_value(key, x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {format_value(str(k), x)}" for k, x in v.items())
    if isinstance(v, (int, float)) and _is_duration(key):
        return duration(float(v))
    if isinstance(v, int):
        # identifiers, not amounts: no separators
        return str(v) if key.lower().endswith(("seed", "epoch")) else count(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        if _is_rate(key) and 0.0 <= v <= 1.0:
            return percent(v)
        if key.lower() in ("eps", "step_size"):
            return f"{v:g}"
        if "loss" in key.lower():
            return f"{v:.4f}"
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------- HTML

# result words of the checks table, coloured by what they mean
_RESULT_CLASSES = {"passed": "ok", "FAILED": "bad", "not run": "na"}


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(label(k))}</th>" for k in keys)
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            text = format_value(k, v)
            cls = ("num" if isinstance(v, (int, float)) and not isinstance(v, bool)
                   else _RESULT_CLASSES.get(text, ""))
            cells.append(f"<td{f' class={cls}' if cls else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def png_size(png: Path | str) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header; (0, 0) when it is not a PNG."""
    with open(png, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return 0, 0
    return struct.unpack(">II", head[16:24])


# PNGs wider than this span the full width (two figures of the default 4.2-inch size share a row)
_WIDE_PX = 600


def _figure(fig: Figure, anchor: str, section: str, reference_n: int | None) -> str:
    png = Path(fig.png)
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    width, _ = png_size(png)
    wide = fig.wide if fig.wide is not None else width > _WIDE_PX
    n = ""
    if fig.n is not None and fig.n != reference_n:
        n = f" <span class='n'>n = {count(fig.n)} {html.escape(fig.n_of)}</span>"
    caption = html.escape(fig.caption)
    return (f"<figure id='{anchor}'{' class=wide' if wide else ''}>"
            f"<a class='zoom' href='#{anchor}' title='enlarge'>"
            f"<img alt='{caption}' src=\"data:image/png;base64,{data}\"></a>"
            f"<figcaption>{caption}{n}</figcaption>"
            f"<a class='close' href='#{section}'>close ×</a></figure>")


def _headline(stats: list[Stat]) -> str:
    return ("<div class='headline'>" + "".join(
        f"<div class='stat'><div class='value'>{html.escape(s.value)}</div>"
        f"<div class='label'>{html.escape(s.label)}</div>"
        + (f"<div class='note'>{html.escape(s.note)}</div>" if s.note else "") + "</div>"
        for s in stats) + "</div>")


def _provenance(provenance: dict[str, Any]) -> str:
    facts = {**run_facts(), **environment()}
    nested = {}
    for k, v in provenance.items():
        if isinstance(v, (dict, list)):
            nested[k] = v
        else:
            facts[k] = v
    facts["git commit"] = facts["git commit"] or "none (not run from a git checkout)"
    rows = "".join(f"<tr><th>{html.escape(label(k))}</th><td>{html.escape(format_value(k, v))}</td></tr>"
                   for k, v in facts.items())
    details = "".join(f"<details><summary>{html.escape(k)} (click to show)</summary><pre>"
                      + html.escape(json.dumps(v, indent=2, default=str)) + "</pre></details>"
                      for k, v in nested.items())
    return (f"<section id='provenance'><h2>Provenance</h2><table class='facts'>{rows}</table>"
            f"{details}</section>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.4em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
p{max-width:60em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok{color:#176b2c;font-weight:600}td.bad{color:#b00020;font-weight:700}td.na{color:#777}
table.facts th{text-align:left;white-space:nowrap}table.facts td{word-break:break-all}
.tablewrap{overflow-x:auto;max-width:100%}.tablewrap.scroll{max-height:30em;overflow-y:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr));gap:1em 1.5em;align-items:start;margin:.6em 0}
.grid>.wide{grid-column:1/-1}
figure{margin:0}img{max-width:100%;height:auto}a.zoom{cursor:zoom-in;display:inline-block;max-width:100%}
figcaption{font-size:.85em;color:#444;margin:.3em 0 0;max-width:60em}
.n{display:inline-block;margin-left:.4em;padding:0 .4em;border-radius:.6em;background:#eef2f8;color:#234;font-size:.95em;white-space:nowrap}
figure .close{display:none}
figure:target{position:fixed;inset:0;z-index:10;margin:0;padding:2.6em 1em 1em;background:rgba(25,25,25,.97);overflow:auto}
figure:target{text-align:center}figure:target figcaption{margin:.5em auto}figure:target a.zoom{cursor:default}figure:target img{max-width:none;min-width:min(96vw,1000px);background:#fff}
figure:target figcaption{color:#eee}figure:target .n{background:#445;color:#fff}
figure:target .close{display:block;position:fixed;top:.6em;right:1.2em;color:#fff;font-size:1.1em;text-decoration:none}
.headline{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.8em;margin:1em 0 1.4em}
.stat{border:1px solid #d8dde6;border-radius:8px;padding:.7em .9em;background:#f8fafd}
.stat .value{font-size:1.7em;font-weight:650;font-variant-numeric:tabular-nums;white-space:nowrap}
.stat .label{font-weight:600;color:#333}.stat .note{font-size:.8em;color:#666;margin-top:.2em}
details{margin:.5em 0}summary{cursor:pointer;font-weight:600}pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}"""


GENERATOR = "<meta name='generator' content='pellucid'>"


def check_report_writable(path: Path | str) -> None:
    """Refuse to overwrite a file at ``path`` that is not a pellucid report (the user's own file)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError as e:
        raise PellucidError(f"cannot read {path} ({e.strerror}); move it away") from None
    # reports written before the generator tag start with the same head and a "pellucid" title
    if GENERATOR not in head and "<meta charset='utf-8'><title>pellucid" not in head:
        raise PellucidError(f"{path} exists and was not written by pellucid; move it away or "
                            "choose another directory (it is never overwritten)")


def write_report(path: Path | str, title: str, sections: list[Section],
                 provenance: dict[str, Any] | None = None, *, headline: list[Stat] | None = None,
                 n: int | None = None) -> Path:
    """Write the report to ``path`` (atomically); every figure is embedded, no external files.
    A file at ``path`` that pellucid did not write is refused (:func:`check_report_writable`).

    ``headline``: the key numbers, shown first. ``n``: the image count of the headline's
    evaluation; a figure drawn from another count shows its own. ``provenance``: shown last with
    the time, command line, git commit and :func:`environment` (nested values, e.g. the config,
    as JSON)."""
    check_report_writable(path)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{GENERATOR}"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
             f"<body><h1>{html.escape(title)}</h1>"]
    if headline:
        parts.append(_headline(headline))
    n_fig = 0
    for i, s in enumerate(sections):
        anchor = f"s{i}"
        parts.append(f"<section id='{anchor}'><h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        items = []
        for fig in s.figures:
            fig = fig if isinstance(fig, Figure) else Figure(*fig)
            n_fig += 1
            items.append(_figure(fig, f"fig{n_fig}", anchor, n))
        if s.table:
            wrap = f"<div class='tablewrap{' scroll' if s.table_beside else ''}'>{_table(s.table)}</div>"
            if s.table_beside and s.figures:
                items.append(wrap)  # beside the figures: after them in the grid
            else:
                parts.append(wrap)
        if items:
            parts.append("<div class='grid'>" + "".join(items) + "</div>")
        parts.append("</section>")
    parts.append(_provenance(provenance or {}) + "</body></html>")
    path = Path(path)
    save_bytes_atomic(path, "\n".join(parts).encode("utf-8"))
    return path
