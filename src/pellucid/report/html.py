"""One self-contained HTML report per run: figures embedded as data URIs, metrics, provenance."""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pellucid._io import save_bytes_atomic
from pellucid.errors import PellucidError


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    table: list[dict[str, Any]] | None = None


def environment() -> dict[str, str]:
    """Versions and hardware, recorded beside every result."""
    import pellucid

    return {"pellucid": pellucid.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads()),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
img{max-width:100%}figcaption{font-size:.8em;color:#555;max-width:520px}pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}"""


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
                 provenance: dict[str, Any] | None = None) -> Path:
    """Write the report to ``path`` (atomically); every figure is embedded, no external files.
    A file at ``path`` that pellucid did not write is refused (:func:`check_report_writable`)."""
    check_report_writable(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR}<title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        if s.table:
            parts.append(_table(s.table))
        parts.extend(_figure(png, cap) for png, cap in s.figures)
    prov = {"environment": environment(), **(provenance or {})}
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(prov, indent=2, default=str))
                 + "</pre></body></html>")
    path = Path(path)
    save_bytes_atomic(path, "\n".join(parts).encode("utf-8"))
    return path
