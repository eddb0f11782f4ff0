"""``python -m benchmarks render``: the docs' results page, from the JSON lines in ``results/`` only.

One section per benchmark with a results file: its summary and expected time, then its latest
line (or every line, where the file is a series: one model or setting per line) as Markdown
tables, each with the environment it was measured in and the command that reproduces it. The
tables are generic: a result's scalars become a field / value table (nested dicts flattened to
dotted names), and its records (a list of dicts, or a dict of dicts: one row per entry) become
tables of their own, transposed when they are much wider than long. ``SPECS`` holds the few
per-benchmark layouts worth having (the explanation table as method x metric, the rejection
protocol's own tables). Nothing here holds a number: every figure is read from the files.

Reads both kinds of line: the runner's ``{"benchmark", "environment", "config", "result"}`` and
the older lines that hold the result alone (often with an ``env`` / ``environment`` field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks import REPO, RESULTS_DIR, load, names

DEFAULT_OUT = REPO / "docs" / "results.md"
MAX_LIST = 40  # items of a list of values shown inline
TRANSPOSE_COLUMNS = 8  # a records table wider than this, and no longer than it, is transposed
# results files older than the runner, named otherwise than NAME.jsonl
LEGACY_FILES = {"bench_pullback_cpu.json": "bench_pullback"}


# --------------------------------------------------------------------------- reading


@dataclass
class Line:
    """One results line: the result, and what was recorded around it (new lines only)."""

    result: Any
    source: Path
    number: int  # 1-based, in its file
    environment: dict | None = None  # the runner's, or an old line's own env / environment field
    config: dict | None = None
    recorded_by_runner: bool = False


def read_lines(path: Path) -> list[Line]:
    """Every JSON object in ``path``, one per line (a ``.json`` file may also hold one object or a
    list of them); lines that are not JSON are skipped with a note on stderr."""
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None
        if whole is not None:
            return [_line(obj, Path(path), i + 1) for i, obj in enumerate(whole if isinstance(whole, list) else [whole])]
    out = []
    for i, raw in enumerate(text.splitlines()):
        if not raw.strip():
            continue
        try:
            out.append(_line(json.loads(raw), Path(path), i + 1))
        except ValueError as e:
            print(f"{path}:{i + 1}: not a JSON line, skipped ({e})", file=sys.stderr)
    return out


def _line(obj: Any, source: Path, number: int) -> Line:
    if isinstance(obj, dict) and {"benchmark", "environment", "config", "result"} <= obj.keys():
        return Line(obj["result"], source, number, obj["environment"], obj["config"], True)
    env = None
    if isinstance(obj, dict):
        obj = dict(obj)
        obj.pop("benchmark", None)
        env = obj.pop("environment", None) or obj.pop("env", None)
    return Line(obj, source, number, env if isinstance(env, dict) else None)


def results_files(results_dir: Path) -> dict[str, list[Path]]:
    """Benchmark name -> its results files (older names first); files of no known benchmark
    keep their own stem as the name."""
    files: dict[str, list[Path]] = {}
    for path in sorted(Path(results_dir).glob("*.json*")):
        if path.suffix not in (".json", ".jsonl"):
            continue
        name = LEGACY_FILES.get(path.name, path.stem)
        files.setdefault(name, []).append(path)
    for paths in files.values():
        paths.sort(key=lambda p: (p.name not in LEGACY_FILES, p.name))
    return files


# --------------------------------------------------------------------------- formatting


def fmt(value: Any) -> str:
    """One table cell."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            shown = ", ".join(fmt(v) for v in value[:MAX_LIST])
            return shown + (f", … ({len(value)} in all)" if len(value) > MAX_LIST else "")
        return _cell(json.dumps(value, separators=(",", ":")))
    if isinstance(value, dict):
        return _cell(json.dumps(value, separators=(",", ":")))
    return _cell(str(value))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.caption}**", ""] if self.caption else []
        lines += ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def _is_records(value: Any) -> bool:
    """A list of dicts, or a dict whose values are all dicts: one table row per entry."""
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, dict) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(isinstance(v, dict) for v in value.values())
    return False


def _flatten(obj: dict, caption: str, prefix: str = "") -> tuple[dict[str, Any], list[Table]]:
    """``obj``'s scalars (nested plain dicts as dotted names), and a table per nested records."""
    scalars: dict[str, Any] = {}
    tables: list[Table] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if _is_records(value):
            tables += records_tables(value, f"{caption} · {name}" if caption else name)
        elif isinstance(value, dict):
            inner, more = _flatten(value, caption, f"{name}.")
            scalars.update(inner)
            tables += more
        else:
            scalars[name] = value
    return scalars, tables


def _labels(records: list | dict) -> tuple[str, list[tuple[str, dict]]]:
    """(label column, [(label, record)]): a dict's keys, or a list's first string field whose
    values are all different, or the position."""
    if isinstance(records, dict):
        return "", [(str(k), v) for k, v in records.items()]
    first = records[0]
    for key, value in first.items():
        values = [r.get(key) for r in records]
        if isinstance(value, str) and all(isinstance(v, str) for v in values) and len(set(values)) == len(values):
            return key, [(r[key], {k: v for k, v in r.items() if k != key}) for r in records]
    return "#", [(str(i + 1), r) for i, r in enumerate(records)]


def records_tables(records: list | dict, caption: str) -> list[Table]:
    """A table with a row per record (columns: the records' flattened scalars), transposed when
    wide and short, then the tables nested inside the records."""
    label, items = _labels(records)
    flat, nested = [], []
    for name, record in items:
        scalars, tables = _flatten(record, f"{caption} · {name}")
        flat.append((name, scalars))
        nested += tables
    columns = list(dict.fromkeys(k for _, s in flat for k in s))
    if len(columns) > 3 * TRANSPOSE_COLUMNS and all(_is_records(r) for _, r in items):
        # records of records (model -> metric -> figures): a table per record reads better
        return [t for name, record in items for t in records_tables(record, f"{caption} · {name}")]
    if not columns:
        return nested
    if len(columns) > TRANSPOSE_COLUMNS and len(flat) <= len(columns):
        table = Table(caption, [label or "field"] + [_cell(n) for n, _ in flat])
        table.rows = [[_cell(c)] + [fmt(s.get(c)) if c in s else "" for _, s in flat] for c in columns]
    else:
        table = Table(caption, [label or "name"] + [_cell(c) for c in columns])
        table.rows = [[_cell(n)] + [fmt(s[c]) if c in s else "" for c in columns] for n, s in flat]
    return [table, *nested]


def generic(result: Any) -> str:
    """Any result as Markdown tables."""
    if isinstance(result, list):
        return "\n\n".join(t.markdown() for t in records_tables(result, "")) if _is_records(result) \
            else fmt(result)
    if not isinstance(result, dict):
        return fmt(result)
    scalars, tables = _flatten(result, "")
    out = []
    if scalars:
        kv = Table("", ["field", "value"], [[_cell(k), fmt(v)] for k, v in scalars.items()])
        out.append(kv.markdown())
    out += [t.markdown() for t in tables]
    return "\n\n".join(out)


# --------------------------------------------------------------------------- per-benchmark layouts


def _explain_table(result: dict) -> str:
    """One explanation table: a row per method, a column per metric (mean ± standard error),
    arrows from the rows' ``higher_is_better``; then the table's other fields."""
    rows = result.get("rows") or []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    better = {r["metric"]: r.get("higher_is_better") for r in rows}
    cells = {(r["method"], r["metric"]): r for r in rows}

    def cell(r: dict | None) -> str:
        if r is None or r.get("mean") is None:
            return "–"
        sem = r.get("sem")
        return fmt(float(f"{r['mean']:.4g}")) + ("" if sem is None else f" ± {sem:.2g}")

    arrow = {True: " ↑", False: " ↓", None: ""}
    table = Table("", ["method"] + [m + arrow[better[m]] for m in metrics],
                  [[m] + [cell(cells.get((m, k))) for k in metrics] for m in methods])
    rest = {k: v for k, v in result.items() if k != "rows"}
    return table.markdown() + ("\n\n" + generic(rest) if rest else "")


def _metric_rejection(result: dict) -> str:
    """The rejection protocol's own tables (``metric_rejection.render_markdown``), then the run's
    other fields; a ``--cost-only`` line generically."""
    if "models" not in result:
        return generic(result)
    from benchmarks.metric_rejection import render_markdown

    rest = {k: v for k, v in result.items() if k not in ("models", "attacks")}
    return render_markdown(result) + "\n\n" + generic(rest)


@dataclass
class Spec:
    """How a benchmark's file is shown: ``series`` every line (or, with ``latest_by``, the latest
    line per key), else the latest line (the latest one ``prefer`` accepts, if any); ``render``
    the Markdown of one result."""

    series: bool = False
    latest_by: Callable[[Any], Any] | None = None
    prefer: Callable[[Any], bool] | None = None
    render: Callable[[Any], str] = generic


def _key(*fields: str) -> Callable[[Any], Any]:
    return lambda r: tuple(r.get(f) for f in fields) if isinstance(r, dict) else None


SPECS: dict[str, Spec] = {
    "adaptive_attack": Spec(series=True),
    "apgd_crosscheck": Spec(series=True),
    "autoattack_full": Spec(series=True),
    "budget_agreement": Spec(series=True),
    "explain_table": Spec(series=True, latest_by=_key("model", "target"), render=_explain_table),
    "fab_crosscheck": Spec(series=True),
    "inh_mnist": Spec(series=True),
    "metric_rejection": Spec(prefer=lambda r: isinstance(r, dict) and "models" in r, render=_metric_rejection),
    "metric_resnet_standin": Spec(series=True),
    "metric_table1": Spec(series=True),
    "robustness_table": Spec(series=True),
}


def shown(lines: list[Line], spec: Spec) -> list[Line]:
    """The lines a section shows, in file order."""
    if not lines:
        return []
    if spec.series:
        if spec.latest_by is None:
            return lines
        latest = {spec.latest_by(line.result): id(line) for line in lines}
        keep = set(latest.values())
        return [line for line in lines if id(line) in keep]
    preferred = [l for l in lines if spec.prefer is None or spec.prefer(l.result)]
    return [(preferred or lines)[-1]]


# --------------------------------------------------------------------------- the page


def environment_summary(line: Line) -> str:
    env = line.environment
    if not line.recorded_by_runner:
        if not env:
            return "recorded before the runner; no environment recorded"
        return "recorded before the runner: " + ", ".join(f"{k} {fmt(v)}" for k, v in env.items())
    parts = [f"pellucid {env.get('pellucid')}", f"torch {env.get('torch')}", f"Python {env.get('python')}",
             f"{env.get('cpu')}" + (f" ({env['cpu_count']} cores)" if env.get("cpu_count") else ""),
             f"{env.get('threads')} threads", f"device {env.get('device')}"]
    if env.get("seed") is not None:
        parts.append(f"seed {env['seed']}")
    commit = env.get("git_commit")
    parts.append(f"commit {commit[:10]}" if commit else "commit unknown")
    parts.append(f"{env.get('timestamp')}")
    if env.get("wall_seconds") is not None:
        parts.append(f"{fmt(env['wall_seconds'])} s")
    return _cell(" · ".join(parts))


def _title(line: Line, spec: Spec) -> str:
    where = f"line {line.number} of `{_rel(line.source)}`"
    if isinstance(line.result, dict):
        label = ", ".join(f"{k} {fmt(line.result[k])}" for k in ("model", "target", "model_dir")
                          if k in line.result and not isinstance(line.result[k], (dict, list)))
        if label:
            where = f"{label} ({where})"
    return where if spec.series else f"latest: {where}"


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def section(name: str, paths: list[Path]) -> str:
    spec = SPECS.get(name, Spec())
    lines = [line for p in paths for line in read_lines(p)]
    try:
        module = load(name)
        head = [f"## {name}", "", f"{module.SUMMARY}. Expected time: {module.EXPECTED_TIME}."]
    except LookupError:
        head = [f"## {name}", "", "(no benchmark of this name in `benchmarks/`)"]
    files = ", ".join(f"`{_rel(p)}`" for p in paths)
    chosen = shown(lines, spec)
    which = "every line" if spec.series and spec.latest_by is None else \
        ("the latest line per table" if spec.latest_by else "the latest line")
    head += ["", f"Results: {files} ({len(lines)} line{'s' * (len(lines) != 1)}; shown: {which})."]
    body = []
    for line in chosen:
        reproduce = f"`{line.environment['command']}`" if line.recorded_by_runner else \
            "not recorded (the line predates the runner)"
        body += ["", f"### {name}: {_title(line, spec)}", "",
                 f"Environment: {environment_summary(line)}.  ", f"Reproduce: {reproduce}.", "",
                 spec.render(line.result)]
    return "\n".join(head + body)


def render(results_dir: Path = RESULTS_DIR) -> str:
    """The whole page."""
    files = results_files(results_dir)
    order = [n for n in names() if n in files] + sorted(n for n in files if n not in names())
    missing = [n for n in names() if n not in files]
    page = ["# Benchmark results", "",
            "Generated by `python -m benchmarks render` from the JSON lines in `benchmarks/results/`; "
            "do not edit by hand. To update a section, rerun its benchmark (`python -m benchmarks "
            "NAME ...`, which appends a line with its environment and regenerates this page). "
            "Lines written before the runner existed carry no command and only the environment "
            "they recorded themselves.", "",
            "Sections: " + ", ".join(f"[{n}](#{n})" for n in order) + ".", ""]
    if missing:
        page += ["No results recorded yet: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    page += [section(n, files[n]) + "\n" for n in order]
    return "\n".join(page).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsynced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str], results_dir: Path = RESULTS_DIR) -> int:
    from benchmarks._blocks import MissingResult, stale

    p = argparse.ArgumentParser(prog="python -m benchmarks render",
                                description="Write the docs' results page and the generated blocks of "
                                            "README.md and docs/*.md from benchmarks/results/*.jsonl.")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="the Markdown file to write, '-' for stdout (default: docs/results.md)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming every file that a rendering would change")
    args = p.parse_args(argv)
    text = render(results_dir)
    blocks = {}
    # README.md and docs/ quote the repository's own results: another results directory renders
    # its page only, never their blocks
    if Path(results_dir).resolve() == RESULTS_DIR.resolve():
        try:
            blocks = stale(results_dir)
        except MissingResult as e:
            print(f"python -m benchmarks render: {e}", file=sys.stderr)
            return 2
    if args.check:
        changed = [str(_rel(path)) for path in blocks]
        if args.out != "-" and (not Path(args.out).exists() or Path(args.out).read_text() != text):
            changed.insert(0, str(_rel(Path(args.out))))
        for name in changed:
            print(f"out of date: {name} (python -m benchmarks render)", file=sys.stderr)
        return 1 if changed else 0
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_atomic(Path(args.out), text)
        print(f"wrote {args.out}", file=sys.stderr)
    for path, new in blocks.items():
        write_atomic(path, new)
        print(f"wrote {_rel(path)}", file=sys.stderr)
    return 0
