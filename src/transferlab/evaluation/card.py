"""model/README.md: the model card of a run, in the Hugging Face format (YAML metadata, then Markdown).

Everything comes from the run directory (metrics.json, config.yaml, model/config.json, and a cv.json or
compare.json beside it when the run is one fold or seed of several), so `transferlab card RUN` rewrites it at
any time: base model, task, labels, data, the plan with trainable ratios, held-out metrics with their spread where
known, training time and hardware, intended use and limitations (the doctor's warnings among them), and the
command and config that reproduce the run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from transferlab.errors import UserError
from transferlab.evaluation.metrics import is_number
from transferlab.tasks import task_class

# Bundled backbones and the Hugging Face Hub id of the model each one is (the card's `base_model`).
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
# Scores that are a share of examples: their standard error over n examples is sqrt(p (1 - p) / n).
PROPORTIONS = ("accuracy", "exact_match", "token_accuracy")


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _spreads(run_dir: Path) -> tuple[dict[str, float], str]:
    """(metric -> std, what it is over) from the cross-validation or comparison this run is part of."""
    parent = run_dir.parent
    cv = _read(parent / "cv.json")
    if cv and any(Path(f["run_dir"]).name == run_dir.name for f in cv.get("per_fold", [])):
        return {k: v["std"] for k, v in cv["metrics"].items()}, f"std over {cv['folds']} folds"
    compare = _read(parent / "compare.json")
    run = next((r for r in compare.get("runs", []) if Path(r["run_dir"]).name == run_dir.name), None)
    row = next((r for r in compare.get("rows", []) if run and r["variant"] == run["variant"]), None)
    if row and row.get("seeds", 1) > 1:
        return {k[:-4]: v for k, v in row.items() if k.endswith("_std") and is_number(v)}, \
            f"std over {row['seeds']} seeds"
    return {}, ""


def _metric_rows(metrics: dict, run_dir: Path) -> list[tuple[str, float, str]]:
    """(metric, value, spread) for each scalar held-out metric."""
    spreads, over = _spreads(run_dir)
    n = metrics.get("eval_examples") or 0
    rows = []
    for name, value in metrics.get("eval", {}).items():
        if not is_number(value):
            continue
        if name in spreads:
            spread = f"± {spreads[name]:.4f} ({over})"
        elif name in PROPORTIONS and n and 0 <= value <= 1:
            spread = f"± {math.sqrt(value * (1 - value) / n):.4f} (standard error over {n:,} examples)"
        else:
            spread = "not known (a single run)"
        rows.append((name, value, spread))
    return rows


def _split(cfg: dict, metrics: dict) -> str:
    data = cfg["data"]
    if data.get("eval"):
        return f"the separate file {data['eval']}"
    return f"a held-out {data['eval_fraction']:.0%} of {data['train']} (seed {cfg['seed']})"


def _front_matter(cfg: dict, metrics: dict, run_dir: Path, pipeline_tag: str, standard: bool) -> dict:
    name = cfg["model"]["name"]
    meta: dict = {"library_name": "transformers", "tags": ["transferlab", metrics.get("task", "")] +
                  ([] if standard else ["custom-architecture"]), "pipeline_tag": pipeline_tag or None}
    if name in HUB_IDS:
        meta["base_model"] = HUB_IDS[name]
    meta["datasets"] = [cfg["data"]["train"]]
    rows = _metric_rows(metrics, run_dir)
    meta["metrics"] = [m for m, _, _ in rows]
    meta["model-index"] = [{"name": run_dir.name, "results": [{
        "task": {"type": pipeline_tag or metrics.get("task", "")},
        "dataset": {"name": cfg["data"]["train"], "type": cfg["data"]["train"], "split": _split(cfg, metrics)},
        "metrics": [{"type": m, "value": round(v, 4)} for m, v, _ in rows]}]}]
    return {k: v for k, v in meta.items() if v not in (None, [], "")}


def _usage(model_dir: Path, pipeline_tag: str, standard: bool) -> str:
    """How to run the model with transformers (a pipeline where transformers 5 has one for the task), or with
    transferlab."""
    load = "" if standard else "import transferlab  # registers transferlab's model classes with transformers\n"
    if pipeline_tag in _PIPELINE_EXAMPLES:
        code = (f"{load}from transformers import pipeline\n\n"
                f"model = pipeline(\"{pipeline_tag}\", model=\"{model_dir}\")\n{_PIPELINE_EXAMPLES[pipeline_tag]}")
    else:  # question answering and text-to-text: transformers 5 removed their pipelines
        auto, example = _AUTO_EXAMPLES.get(pipeline_tag, ("AutoModel", "print(model(**inputs))"))
        code = (f"{load}from transformers import {auto}, AutoTokenizer\n\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{model_dir}\")\n"
                f"model = {auto}.from_pretrained(\"{model_dir}\")\n{example}")
    return f"```python\n{code}\n```\n\nor `transferlab predict {model_dir.parent}` (see `transferlab predict --help`)."


_PIPELINE_EXAMPLES = {
    "text-classification": 'print(model("A fine film."))',
    "token-classification": 'print(model("Ridley Scott directed Alien in London.", aggregation_strategy="first"))'}
_AUTO_EXAMPLES = {
    "question-answering": (
        "AutoModelForQuestionAnswering",
        'inputs = tokenizer("Who directed it?", "Alien was directed by Ridley Scott.", return_tensors="pt")\n'
        "out = model(**inputs)\n"
        "start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())\n"
        'print(tokenizer.decode(inputs["input_ids"][0, start:end + 1]))'),
    "text2text-generation": (
        "AutoModelForSeq2SeqLM",
        'ids = model.generate(**tokenizer(["..."], return_tensors="pt"))\n'
        "print(tokenizer.batch_decode(ids, skip_special_tokens=True))")}


def _limitations(cfg: dict, metrics: dict) -> list[str]:
    items = [f"Trained on {metrics.get('train_examples', '?'):,} examples of {cfg['data']['train']}: expect lower "
             "scores on texts unlike them (other domains, registers or languages).",
             f"Inputs longer than {cfg['model']['max_length']} tokens are cut to that length."]
    if metrics.get("labels"):
        items.append(f"It only knows the labels {', '.join(map(str, metrics['labels']))}; every input gets one.")
    if metrics.get("eval_examples", 0) < 1000:
        items.append(f"The held-out metrics come from {metrics.get('eval_examples', 0):,} examples: treat them as "
                     "estimates with the spread shown.")
    items += [f"The doctor warned ({w['code']}): {w['message']}" for w in metrics.get("warnings", [])]
    return items


def card_text(run_dir: Path) -> str:
    """The model card of a run directory, as text."""
    metrics = _read(run_dir / "metrics.json")
    config_path = run_dir / "config.yaml"
    if not metrics or not config_path.is_file() or not (run_dir / "model").is_dir():
        raise UserError(f"'{run_dir}' is not a finished run (it needs metrics.json, config.yaml and model/).",
                        "Pass the directory of a run written by `transferlab train`.")
    cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    model_config = _read(run_dir / "model" / "config.json")
    task = task_class(metrics.get("task", "classification"))
    tag = getattr(task, "pipeline_tag", "")
    standard = not model_config.get("model_type", "").startswith("transferlab")  # a transferlab class needs the import
    base = cfg["model"]["name"]
    front = yaml.safe_dump(_front_matter(cfg, metrics, run_dir, tag, standard), sort_keys=False, allow_unicode=True)
    hw = metrics.get("hardware", {})
    plan_rows = "\n".join(
        f"| {p['phase']} {p.get('name', '')} | {p['epochs']:g} | {p.get('learns') or ', '.join(p['groups'])} | "
        f"{p['trainable_params']:,} | {100 * p['trainable_ratio']:.2f}% |" for p in metrics.get("plan", []))
    metric_rows = "\n".join(f"| {m} | {v:.4f} | {s} |" for m, v, s in _metric_rows(metrics, run_dir))
    lines = [
        f"---\n{front}---\n",
        f"# {run_dir.name}\n",
        f"A {metrics.get('task')} model fine-tuned with transferlab from "
        f"`{HUB_IDS.get(base, base)}` with the `{metrics.get('strategy')}` strategy.\n",
        "## Model\n",
        f"- base model: `{HUB_IDS.get(base, base)}`" + (f" (bundled as `{base}`)" if base in HUB_IDS else ""),
        f"- task: {metrics.get('task')}" + (f" (`pipeline(\"{tag}\")`)" if tag else ""),
        f"- labels: {', '.join(map(str, metrics['labels']))}" if metrics.get("labels") else "- labels: none (the task "
        "predicts scores, spans or text)",
        f"- saved as: `{(model_config.get('architectures') or ['?'])[0]}`" +
        ("" if standard else " (a transferlab class: `import transferlab` before loading it with transformers)"),
        "\n## Data\n",
        f"- training data: {cfg['data']['train']}, {metrics.get('train_examples', 0):,} examples"
        + (f" ({metrics['augmented_train_examples']:,} with augmented copies)"
           if metrics.get("augmented_train_examples", 0) > metrics.get("train_examples", 0) else ""),
        f"- held-out data: {_split(cfg, metrics)}, {metrics.get('eval_examples', 0):,} examples",
        "\n## Training plan\n",
        "| phase | epochs | learns (group @ lr) | trainable parameters | trainable ratio |",
        "|---|---|---|---|---|",
        plan_rows,
        "\n## Held-out metrics\n",
        "| metric | value | spread |",
        "|---|---|---|",
        metric_rows,
        "\n## Training time and hardware\n",
        f"- {metrics.get('steps', 0):,} optimizer steps in {metrics.get('train_time_s', 0):.1f} s "
        f"({metrics.get('train_samples_per_s', 0):.1f} samples/s, {metrics.get('precision', 'fp32')})",
        f"- hardware: {hw['name']} ({hw['device']}, {hw['processes']} process(es), {hw['cpu_cores']} CPU cores, "
        f"{hw['torch_threads']} torch threads)" if hw else "- hardware: not recorded (a run of an older version)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in metrics.get('versions', {}).items())}",
        "\n## Intended use\n",
        f"{(metrics.get('task') or 'the task').capitalize()} of inputs like those of {cfg['data']['train']}. Use it:\n",
        _usage(run_dir / "model", tag, standard),
        "\n## Limitations\n",
        "\n".join(f"- {item}" for item in _limitations(cfg, metrics)),
        "\n## Reproduce\n",
        f"```bash\ntransferlab train --config {config_path} --name {run_dir.name}-again\n```\n",
        "with this `config.yaml` (the run's resolved config, seed included; `--name` keeps this run):\n",
        f"```yaml\n{config_path.read_text(encoding='utf-8').rstrip()}\n```\n",
    ]
    return "\n".join(lines)


def write_card(run_dir: Path) -> Path:
    """Write run_dir/model/README.md from the run's files; returns its path."""
    path = Path(run_dir) / "model" / "README.md"
    path.write_text(card_text(Path(run_dir)), encoding="utf-8")
    return path
