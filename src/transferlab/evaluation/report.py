"""report.html: one self-contained page per run or per comparison (images inlined, all text escaped)."""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jinja2

from transferlab.errors import UserError
from transferlab.evaluation.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER, headline_metric, is_number

# Known plots first, in reading order; any other PNG in plots/ follows, sorted by name.
PLOT_TITLES = {
    "learning_curves": "Learning curves",
    "confusion_matrix": "Confusion matrix",
    "lr": "Learning rate per group",
    "grad_norms": "Gradient norm per group",
    "weight_change": "Relative weight change per group",
}
# metrics.json keys that have their own place; other scalars join the overview, other nested values "Other".
_RENDERED_KEYS = {"task", "model", "strategy", "plan", "eval", "train_time_s", "warnings", "seed", "versions",
                  "auto"}
AUTO_COLUMNS = {"strategy": "candidate", "why": "considered because", "trainable_pct": "trainable %",
                "probe_score": "probe score", "probe_time_s": "probe time (s)",
                "predicted_time_s": "predicted time (s)", "epochs": "epochs", "decision": "decision"}


class Cell(NamedTuple):
    text: str
    best: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    title: str = ""


@dataclass
class Section:
    """One block of the page; kind picks how the template draws body."""

    title: str
    kind: str  # "facts" (label, value) pairs | "warnings" | "tables" | "images" (title, data uri) | "pre"
    body: object
    folded: bool = False  # drawn as <details>, opened by a click


@dataclass
class Page:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ page.title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 0;
       background: #f4f6f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } .subtitle { color: #5a6272; margin: 0 0 20px; }
section, details { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 14px 18px;
                   margin: 0 0 16px; }
h2, summary { font-size: 16px; font-weight: 600; margin: 0 0 10px; } summary { cursor: pointer; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; }
.fact { background: #f7f9fc; border-radius: 6px; padding: 8px 10px; }
.fact .label { color: #5a6272; font-size: 12px; } .fact .value { font-size: 16px; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e8ebf0; vertical-align: top;
         white-space: pre-line; overflow-wrap: anywhere; }
th { background: #f7f9fc; font-weight: 600; } td.best { font-weight: 700; color: #0b6b2e; }
.warning { border-left: 4px solid #d99a00; background: #fff8e6; padding: 8px 12px; margin: 0 0 8px; }
.warning code { font-weight: 600; } .fix { color: #5a6272; }
figure { margin: 0 0 16px; } figure img { max-width: 100%; border: 1px solid #e8ebf0; }
figcaption { color: #5a6272; font-size: 12px; }
pre { background: #f7f9fc; padding: 10px; overflow-x: auto; margin: 0; }
</style></head>
<body><main>
<h1>{{ page.title }}</h1>
{% if page.subtitle %}<p class="subtitle">{{ page.subtitle }}</p>{% endif %}
{% for s in page.sections %}
{% if s.folded %}<details><summary>{{ s.title }}</summary>{% else %}<section><h2>{{ s.title }}</h2>{% endif %}
{% if s.kind == "facts" %}
<div class="facts">{% for label, value in s.body %}
<div class="fact"><div class="label">{{ label }}</div><div class="value">{{ value }}</div></div>{% endfor %}
</div>
{% elif s.kind == "warnings" %}{% for w in s.body %}
<div class="warning"><code>{{ w.code }}</code> {{ w.message }}
{% if w.fix %}<div class="fix">Fix: {{ w.fix }}</div>{% endif %}</div>{% endfor %}
{% elif s.kind == "tables" %}{% for t in s.body %}
{% if t.title %}<h3>{{ t.title }}</h3>{% endif %}
<table><thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}<tr>{% for c in row %}
<td{% if c.best %} class="best"{% endif %}>{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>{% endfor %}
{% elif s.kind == "images" %}{% for caption, uri in s.body %}
<figure><img src="{{ uri }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>{% endfor %}
{% elif s.kind == "pre" %}<pre>{{ s.body }}</pre>
{% endif %}
{% if s.folded %}</details>{% else %}</section>{% endif %}
{% endfor %}
<p class="subtitle">Written by transferlab.</p>
</main></body></html>
"""

# autoescape: every value put into the page (labels, config text, messages) is HTML-escaped
_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                           lstrip_blocks=True).from_string(_TEMPLATE)


def _fmt(value: object) -> str:
    """A value as short text: floats to 4 significant digits, nested data as JSON, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if _is_nested(value):
        return json.dumps(value, default=str)
    return str(value)


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _images(paths: Sequence[Path]) -> Section | None:
    order = list(PLOT_TITLES)
    found = sorted((p for p in map(Path, paths) if p.is_file()),
                   key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))
    if not found:
        return None
    return Section("Plots", "images", [(PLOT_TITLES.get(p.stem, p.stem), _data_uri(p)) for p in found])


def _render(page: Page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_PAGE.render(page=page), encoding="utf-8")
    return path


def read_history(path: Path) -> list[dict]:
    """Records of a history.jsonl ([] if absent), skipping lines that do not parse (a killed run's last)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_metrics(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}).",
                        "Fix or delete it (`transferlab evaluate` rewrites it), then try again.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not a JSON object of metrics.",
                        "Re-run `transferlab evaluate` on the run to rewrite it.")
    return data


def _is_nested(value: object) -> bool:
    return isinstance(value, Mapping | list | tuple)


def _overview(metrics: Mapping, evals: Mapping) -> Section:
    """Task, model, strategy, seed, time, the eval metrics, then any other scalar of metrics.json."""
    facts = [(label, _fmt(metrics[key])) for key, label in
             (("task", "Task"), ("model", "Model"), ("strategy", "Strategy"), ("seed", "Seed"))
             if key in metrics]
    if is_number(metrics.get("train_time_s")):
        facts.append(("Train time", f"{metrics['train_time_s']:.1f} s"))
    facts += [(f"eval {name}", _fmt(value)) for name, value in evals.items() if not _is_nested(value)]
    facts += [(key, _fmt(value)) for key, value in metrics.items()
              if key not in _RENDERED_KEYS and not _is_nested(value)]
    return Section("Overview", "facts", facts)


def _plan_table(plan: Sequence[Mapping]) -> Table:
    """One row per phase; the learning-rate cell lists the groups that share each rate (absent = frozen)."""
    named = any(phase.get("name") for phase in plan)
    scheduled = any(phase.get("schedule") for phase in plan)
    rows = []
    for phase in plan:
        by_lr: dict[object, list[str]] = {}
        for group, lr in (phase.get("groups") or {}).items():
            if lr:
                by_lr.setdefault(lr, []).append(group)
        rates = phase.get("learns") or "\n".join(f"{_fmt(lr)}: {', '.join(groups)}" for lr, groups in by_lr.items())
        params, ratio = phase.get("trainable_params"), phase.get("trainable_ratio")
        warmup = f", warmup {_fmt(phase['warmup'])}" if phase.get("warmup") else ""
        cells = [_fmt(phase.get("phase")), *([_fmt(phase.get("name"))] if named else []),
                 _fmt(phase.get("epochs")), *([_fmt(phase.get("schedule")) + warmup] if scheduled else []),
                 f"{params:,}" if is_number(params) else _fmt(params),
                 f"{ratio * 100:.3g}%" if is_number(ratio) else _fmt(ratio), rates or "—"]
        rows.append([Cell(text) for text in cells])
    header = ["Phase", *(["Name"] if named else []), "Epochs", *(["Schedule"] if scheduled else []),
              "Trainable params", "Trainable ratio", "Learning rate: groups"]
    return Table(header, rows)


def _metric_tables(evals: Mapping) -> list[Table]:
    """A table per nested metric (per-class scores, confusion matrix...); scalars are in the overview."""
    tables = []
    for name, value in evals.items():
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            rows = [[Cell(str(key)), *(Cell(_fmt(row.get(c))) for c in columns)]
                    for key, row in value.items()]
            tables.append(Table(["", *columns], rows, title=name))
        elif name == "confusion_matrix" and isinstance(value, list) and value:
            per_class = evals.get("per_class")
            names = [str(n) for n in per_class] if isinstance(per_class, Mapping) else []
            names = names if len(names) == len(value) else [str(i) for i in range(len(value))]
            rows = [[Cell(label), *(Cell(_fmt(v)) for v in row)]
                    for label, row in zip(names, value, strict=False)]
            tables.append(Table(["true \\ predicted", *names], rows, title="confusion matrix (rows = true)"))
        elif _is_nested(value):
            tables.append(Table(["Value"], [[Cell(_fmt(value))]], title=name))
    return tables


def _history_summary(history: Sequence[Mapping], evals: Mapping) -> Section | None:
    train = [r for r in history if r.get("kind") == "train"]
    scored = [r for r in history if r.get("kind") == "eval"]
    if not (train or scored):
        return None
    facts = []
    if train:
        last = train[-1]
        facts += [("Optimizer steps", _fmt(last.get("step"))), ("Epochs", _fmt(last.get("epoch"))),
                  ("Phases", str(len({r.get("phase") for r in train}))),
                  ("Last train loss", _fmt(last.get("loss")))]
    if scored:
        facts += [("Evaluations", str(len(scored))), ("Last eval loss", _fmt(scored[-1].get("loss")))]
        metric = headline_metric(evals) or headline_metric(scored[-1].get("metrics") or {})
        values = [r for r in scored if is_number((r.get("metrics") or {}).get(metric))]
        if values:
            pick = min if metric in LOWER_IS_BETTER else max
            best = pick(values, key=lambda r: r["metrics"][metric])
            phase = best.get("phase")
            where = f"at step {best.get('step')}" + (f" (phase {phase + 1})" if is_number(phase) else "")
            facts.append((f"Best eval {metric}", f"{_fmt(best['metrics'][metric])} {where}"))
    return Section("Training summary", "facts", facts)


def _warning(item: object) -> dict[str, str]:
    """A metrics.json warning ({"code", "message", "fix"}, or a bare string) as text fields."""
    if not isinstance(item, Mapping):
        return {"code": "", "message": _fmt(item), "fix": ""}
    return {key: _fmt(item[key]) if item.get(key) else "" for key in ("code", "message", "fix")}


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html from whichever of metrics.json, config.yaml, history.jsonl, plots/ exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"Run directory {run_dir} does not exist.",
                        "Pass the directory of a run written by `transferlab train`, e.g. runs/<name>.")
    metrics = _read_metrics(run_dir / "metrics.json")
    evals = metrics.get("eval") if isinstance(metrics.get("eval"), Mapping) else {}
    page = Page(f"transferlab run: {run_dir.name}",
                " · ".join(_fmt(metrics[k]) for k in ("task", "model", "strategy") if k in metrics))
    page.sections.append(_overview(metrics, evals))
    if metrics.get("warnings"):
        warnings = [_warning(w) for w in metrics["warnings"]]
        page.sections.append(Section(f"Warnings ({len(warnings)})", "warnings", warnings))
    if isinstance(metrics.get("auto"), Mapping):
        page.sections.append(_auto_section(metrics["auto"]))
    if metrics.get("plan"):
        page.sections.append(Section("Plan", "tables", [_plan_table(metrics["plan"])]))
    if tables := _metric_tables(evals):
        page.sections.append(Section("Evaluation details", "tables", tables))
    summary = _history_summary(read_history(run_dir / "history.jsonl"), evals)
    images = _images(list((run_dir / "plots").glob("*.png")))
    page.sections += [s for s in (summary, images) if s is not None]
    config = run_dir / "config.yaml"
    if config.is_file():
        text = config.read_text(encoding="utf-8")
        page.sections.append(Section("Config (config.yaml)", "pre", text, folded=True))
    if metrics.get("versions"):
        versions = metrics["versions"]
        facts = list(versions.items()) if isinstance(versions, Mapping) else [("versions", versions)]
        page.sections.append(Section("Versions", "facts", [(str(k), _fmt(v)) for k, v in facts], folded=True))
    other = [(key, _fmt(value)) for key, value in metrics.items() if key not in _RENDERED_KEYS and _is_nested(value)]
    if other:
        page.sections.append(Section("Other", "facts", other, folded=True))
    return _render(page, run_dir / "report.html")


def _auto_section(auto: Mapping) -> Section:
    """How `--strategy auto` chose the plan: what it read, then one row per candidate with its probe and verdict."""
    folds = f"({auto['probe_folds']} folds) " if auto.get("probe_folds", 1) > 1 else ""
    facts = (f"{_fmt(auto.get('train_examples'))} train examples, {_fmt(auto.get('classes'))} classes, "
             f"{_fmt(auto.get('model_params'))} parameters, budget {_fmt(auto.get('budget') or 'none')}; probes on "
             f"{_fmt(auto.get('probe_train_examples'))} + {_fmt(auto.get('probe_eval_examples'))} training examples "
             f"{folds}took {_fmt(auto.get('probe_time_s'))} s"
             + (f" (probe score = {auto['probe_metric']})" if auto.get("probe_metric") else "")
             + f"; chosen: {_fmt(auto.get('chosen'))}")
    rows = [[Cell(_fmt(c.get(key)), c.get("strategy") == auto.get("chosen")) for key in AUTO_COLUMNS]
            for c in auto.get("candidates", [])]
    return Section("How auto chose the plan", "tables", [Table(list(AUTO_COLUMNS.values()), rows, facts)])


def _best_cells(rows: Sequence[Mapping], columns: Sequence[str]) -> set[tuple[int, str]]:
    """(row, column) of the best value in each column named after a known metric (e.g. f1, eval_loss)."""
    best = set()
    for column in columns:
        name = column.rsplit(".", 1)[-1].removeprefix("eval_")
        if name not in HIGHER_IS_BETTER | LOWER_IS_BETTER:
            continue
        values = {i: row[column] for i, row in enumerate(rows) if is_number(row.get(column))}
        if len(values) < 2:
            continue
        target = (min if name in LOWER_IS_BETTER else max)(values.values())
        best |= {(i, column) for i, v in values.items() if v == target}
    return best


def write_compare_report(out_dir: Path, rows: list[dict], plots: list[Path]) -> Path:
    """Write out_dir/report.html: a table with one row per compared run (any keys) and the given plots."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    best = _best_cells(rows, columns)
    table = Table([str(c) for c in columns],
                  [[Cell(_fmt(row.get(c)), (i, c) in best) for c in columns] for i, row in enumerate(rows)])
    page = Page("transferlab comparison", f"{len(rows)} runs; best value of each metric in bold")
    page.sections.append(Section("Results", "tables", [table]))
    images = _images(plots)
    if images is not None:
        page.sections.append(images)
    return _render(page, Path(out_dir) / "report.html")
