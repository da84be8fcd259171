"""`--strategy auto`: rules of thumb propose candidate plans, short probes measure them, the best that fits the
budget trains.

The course's rules of thumb (under ~1,000 examples extract features or adapt few parameters, 1,000-10,000 freeze
the bottom, above 10,000 fine-tune fully) name where to look; LoRA and layer-wise lr decay join at every size.
Each candidate then trains on a stratified probe subset of the training split (a fraction of a full epoch once the
data is larger than the subset) for at least 50 optimizer updates, at most the run's own epochs, and is scored on
another stratified slice of the training split, so the run's own held-out data never takes part in the choice.
(A first version probed one epoch of the subset: on 400 reviews that is 10 updates, too few for any fine-tuned
plan; `tfidf` won the probes and scored 61% held-out against the Trainer's 77%.) Under SMALL examples a slice is
too small to rank plans (200 reviews leave 40 to score on, where one review is 2.5 points), so the probes
cross-validate over PROBE_FOLDS stratified folds instead and every training example is scored once; there they
rank by ROC AUC where the task reports it (binary classification): a plan trained for 15-20 updates ranks examples
well before its decision threshold settles, and accuracy on 50-example folds moves 2 points per example (at 200
reviews, 3 seeds, accuracy tied tfidf with freeze-attention, AUC put freeze-attention first every time). The
probe's time per example, scaled to the whole training split and the configured epochs, predicts the full run's
time; the best probe score whose full run fits in what is left of the budget wins (a faster plan within `TIE` of
the best is preferred).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import set_seed

from transferlab.backbones import open_backbone
from transferlab.backbones.groups import LayerGroups
from transferlab.config import RunConfig, build_config
from transferlab.data.splits import rarest_class, stratified_kfold, stratified_split, subsample
from transferlab.errors import UserError
from transferlab.pipeline import PreparedRun, load_run_data, make_accelerator, prepare_run, train_run
from transferlab.run_dir import check_run_name
from transferlab.tasks import task_class
from transferlab.tasks.base import RunData
from transferlab.training.baselines import check_baseline, fit_baseline, is_baseline, score
from transferlab.training.trainer import Trainer

SMALL, LARGE = 1_000, 10_000  # the rules of thumb's data sizes
PROBE_TRAIN = 1_000  # most examples a probe trains on
PROBE_EVAL = 500  # most examples a probe is scored on
PROBE_FOLDS = 4  # under SMALL examples probes cross-validate over this many folds
MIN_PROBE_UPDATES = 50  # a probe trains at least this many optimizer updates (up to the run's own epochs)
PROBE_RANKING = "roc_auc"  # what cross-validated probes rank by where the task reports it
TIE = 0.005  # probe scores this close count as equal: the faster plan wins
MIN_FINAL_EPOCHS = 0.5  # a plan whose full run would get fewer epochs than this within the budget is not chosen
BASELINE_PROBE_S = 2.0  # a baseline's probe (fit + score) on a probe subset: a few seconds
_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass
class Candidate:
    """One plan auto considers, why, and what its probe measured."""

    strategy: str
    why: str
    trainable_pct: float | None = None
    probe_score: float | None = None
    probe_time_s: float | None = None
    predicted_time_s: float | None = None
    epochs: float | None = None
    decision: str = ""


@dataclass
class Budget:
    """What the whole of `auto` may take (probes + the final run): seconds, or epochs of full fine-tuning."""

    text: str | None
    seconds: float | None = None
    full_epochs: float | None = None

    def total_s(self, epoch_s: Callable[[], float]) -> float:
        """The budget in seconds (`epoch_s`: one epoch of full fine-tuning on this data); inf when there is none."""
        if self.full_epochs is not None:
            return self.full_epochs * epoch_s()
        return math.inf if self.seconds is None else self.seconds


def parse_budget(text: str | None) -> Budget:
    """`90s`, `10m`, `1h30m`, a plain number of seconds, or `3ep`: the time of 3 epochs of full fine-tuning on this
    data (estimated from one timed training step)."""
    if text is None:
        return Budget(None)
    raw = text.strip().lower()
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*ep(?:ochs?)?", raw):
        return Budget(text, full_epochs=float(m[1]))
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return Budget(text, seconds=float(raw))
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", raw)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != raw.replace(" ", ""):
        raise UserError(f"--budget '{text}' is not a duration.",
                        "Write e.g. --budget 90s, 10m, 1h30m, or 3ep (the time of 3 epochs of full fine-tuning).")
    return Budget(text, seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def candidates(train_examples: int, groups: LayerGroups, text: bool = True) -> list[Candidate]:
    """The plans the rules of thumb suggest for this much data, with LoRA at every size; freeze-attention at every
    size where the model has attention (the best plan at 200 and at all 10,201 reviews), from SMALL up layer-wise
    lr decay (at 200 reviews its decayed rates left the model near a single class: F1 0.38); the TF-IDF baseline
    under SMALL text examples."""
    lora = Candidate("lora", "few trainable parameters at any size")
    attention = [Candidate("freeze-attention", "the attention stays pretrained, the feed-forward layers adapt "
                           "(measured best at 200 and at 10,201 reviews)")] if "attention" in groups.kinds else []
    if train_examples < SMALL:
        rule = f"< {SMALL:,} examples: features or few parameters"
        baseline = [Candidate("tfidf", f"{rule} (classical reference)")] if text else []
        return [*baseline, Candidate("feature-extraction", rule), Candidate("bitfit", rule), lora, *attention]
    if train_examples <= LARGE:
        found = [Candidate(f"freeze-bottom:{groups.num_layers // 2}",
                           f"{SMALL:,}-{LARGE:,} examples: freeze the bottom half")]
    else:
        found = [Candidate("full", f"> {LARGE:,} examples: fine-tune everything")]
    return [*found, lora, *attention,
            Candidate("llrd", f"every layer at a rate decaying downwards, from {SMALL:,} examples")]


def probe_split(data: RunData, seed: int) -> RunData:
    """A stratified probe subset of the training split and a disjoint stratified slice of it to score probes on."""
    classes = data.train["label"].nunique()
    n_eval = min(PROBE_EVAL, max(2 * classes, round(0.2 * len(data.train))))
    if len(data.train) - n_eval < 2 * classes:
        raise UserError(f"--strategy auto needs at least {4 * classes} training examples to probe plans on "
                        f"({classes} classes), but the training split has {len(data.train)}.",
                        "Add data, or name a strategy yourself (e.g. --strategy feature-extraction).")
    train, evaluation = stratified_split(data.train, n_eval / len(data.train), seed)
    if len(train) > PROBE_TRAIN:
        train = subsample(train, PROBE_TRAIN, seed)
    return RunData(train.reset_index(drop=True), evaluation.reset_index(drop=True), data.labels)


def probe_splits(data: RunData, seed: int) -> list[RunData]:
    """Where each candidate is probed: under SMALL examples PROBE_FOLDS stratified folds of the training split
    (fewer when the rarest class has fewer examples), otherwise the one probe split of `probe_split`."""
    rarest = rarest_class(data.train)[1]
    if len(data.train) >= SMALL or rarest < 2:
        return [probe_split(data, seed)]
    folds = stratified_kfold(data.train, min(PROBE_FOLDS, rarest), seed)
    return [RunData(train.reset_index(drop=True), evaluation.reset_index(drop=True), data.labels)
            for train, evaluation in folds]


def with_strategy(cfg: RunConfig, strategy: str, **training) -> RunConfig:
    """`cfg` with another strategy (and training fields), its budget spent; validated like any config."""
    doc = cfg.model_dump(mode="json")
    doc["strategy"].update(name=strategy, budget=None)
    doc["training"].update(training)
    return build_config(doc, f"--strategy auto (candidate {strategy})")


def step_seconds_per_example(prep: PreparedRun, batch_size: int) -> float:
    """Seconds per example of one full fine-tuning step (forward + backward over every weight), timed on a batch
    after one warm-up step: what budgets in epochs and the cost of a probe are estimated from."""
    batch_frame = prep.data.train.head(min(len(prep.data.train), batch_size))
    batch = prep.task.collate(prep.task.encode(batch_frame))
    inputs = {k: v for k, v in batch.items() if not k.startswith("_")}
    prep.model.train()
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        prep.model(**inputs).loss.backward()
        timings.append(time.perf_counter() - start)
    return timings[-1] / len(batch_frame)


def probe_epochs(cfg: RunConfig, probe: RunData) -> float:
    """Epochs over the probe subset: enough for MIN_PROBE_UPDATES updates (a head barely moves in fewer), at least
    one, at most the run's own."""
    t = cfg.training
    updates = math.ceil(len(probe.train) / (t.batch_size * t.grad_accum))
    return round(min(t.epochs, max(1.0, MIN_PROBE_UPDATES / updates)), 2)


def estimated_probe_s(candidate: Candidate, probe: RunData, epochs: float, per_example_s: float) -> float:
    """An upper bound of a probe's seconds: a full step per probe example, a third of one per scored example."""
    scoring = per_example_s * len(probe.eval) / 3
    if is_baseline(candidate.strategy):
        return BASELINE_PROBE_S + scoring
    return per_example_s * len(probe.train) * epochs + scoring


def run_probe(cfg: RunConfig, strategy: str, probe: RunData, epochs: float,
              ranking: str | None = None) -> tuple[str, float, float, float]:
    """(metric, score on the probe slice, training seconds, trainable %) of `strategy` trained on the probe subset;
    the metric is `ranking` where the task reports it, else the task's own (greater is better for every candidate,
    whatever `training.metric` selects checkpoints by)."""
    set_seed(cfg.seed)
    if is_baseline(strategy):
        backbone = open_backbone(cfg.model.name, cfg.model.max_length)
        task = task_class(cfg.task).for_data(cfg, probe, backbone.processor)
        check_baseline(strategy, task)
        fitted = fit_baseline(strategy, task, backbone, task.encoded(probe.train), cfg.seed)
        metrics = score(fitted.model, task, task.encoded(probe.eval))[1]
        seconds, trainable = fitted.fit_time_s, 100 * fitted.phase.trainable_ratio
    else:
        probe_cfg = with_strategy(cfg, strategy, epochs=epochs, eval_every=None, save_every=None,
                                  early_stopping_patience=None, restore_best=False)
        prep = prepare_run(probe_cfg, probe)
        trainable = 100 * max(p.trainable_ratio for p in prep.phases)
        train, evaluation = prep.task.encoded(probe.train), prep.task.encoded(probe.eval)
        with tempfile.TemporaryDirectory(prefix="transferlab-auto-") as work:
            trainer = Trainer(prep.model, prep.task, prep.groups, prep.phases, train, evaluation,
                              probe_cfg.training, cfg.seed, Path(work), make_accelerator(), show_progress=False)
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            metrics = trainer.evaluate()[1]
        task = prep.task
    name = ranking if ranking in metrics else task.metric
    return name, metrics[name], seconds, trainable


@dataclass
class AutoDecision:
    """What auto saw, probed and chose: recorded in metrics.json (`auto`) and the report."""

    chosen: str
    epochs: float
    reason: str
    train_examples: int
    classes: int
    model_params: int
    budget: str | None
    budget_s: float | None
    probe_train_examples: int
    probe_eval_examples: int
    probe_epochs: float
    probe_time_s: float
    candidates: list[Candidate]
    probe_folds: int = 1
    probe_metric: str | None = None  # what the probe scores are (None: no probe ran)

    def to_json(self) -> dict:
        return asdict(self)


def _decide(found: list[Candidate], left_s: float, epochs: float, scale: float,
            probed_epochs: float, folds: int = 1) -> tuple[Candidate, float, str]:
    """The chosen candidate, its epochs and why; every candidate's `decision` filled in. A probe that trained
    `probed_epochs` on 1/`scale` of the data (`folds` times) predicts a full run `scale` x `epochs /
    probed_epochs` as long as one of them."""
    fitting = []
    for c in found:
        if c.probe_score is None:
            continue
        one_probe_s = c.probe_time_s / folds
        full_s = one_probe_s * scale * (1.0 if is_baseline(c.strategy) else epochs / probed_epochs)
        c.predicted_time_s = round(full_s, 1)
        c.epochs = None if is_baseline(c.strategy) else epochs
        if full_s > left_s:
            fit_epochs = epochs * left_s / full_s
            if is_baseline(c.strategy) or fit_epochs < MIN_FINAL_EPOCHS:
                c.decision = f"over budget: predicted {full_s:.0f}s > {max(left_s, 0):.0f}s left"
                continue
            c.epochs, c.predicted_time_s = round(fit_epochs, 2), round(left_s, 1)
        fitting.append(c)
    if not fitting:
        raise UserError("--strategy auto: no probed plan can train on all the data within what is left of the "
                        f"budget ({max(left_s, 0):.0f}s).", "Raise --budget, or train on fewer examples "
                        "(--max-train-examples).")
    best = max(c.probe_score for c in fitting)
    near = [c for c in fitting if c.probe_score >= best - TIE]
    chosen = min(near, key=lambda c: c.predicted_time_s)
    for c in fitting:
        if c is chosen:
            faster = " (fastest within 0.5 point of the best)" if len(near) > 1 else ""
            shorter = f"; {c.epochs:g} of {epochs:g} epochs fit the budget" if c.epochs and c.epochs < epochs else ""
            c.decision = f"chosen: best probe score{faster}{shorter}"
        elif c in near:
            c.decision = f"as good, slower than {chosen.strategy}"
        else:
            c.decision = f"probe score {c.probe_score:.4f} < {chosen.probe_score:.4f} of {chosen.strategy}"
    return chosen, chosen.epochs or epochs, chosen.decision


def run_auto(cfg: RunConfig, overwrite: bool = False, show_progress: bool = True,
             on_decided: Callable[[AutoDecision], None] | None = None, on_prepared=None,
             data: RunData | None = None) -> dict:
    """Probe the candidate plans, train the chosen one on all the data as run cfg.name, record the decision.

    `data` replaces the examples the config names (a benchmark's fixed split)."""
    start = time.perf_counter()
    check_run_name(cfg.name)  # before minutes of probing, as below
    if cfg.run_dir.exists() and any(cfg.run_dir.iterdir()) and not overwrite:  # before minutes of probing
        raise UserError(f"Run directory '{cfg.run_dir}' already holds a run.",
                        "Pass --overwrite to replace it, or choose another --name.")
    budget = parse_budget(cfg.strategy.budget)
    data = data or load_run_data(cfg)
    probes = probe_splits(data, cfg.seed)
    probe = probes[0]
    full_prep = prepare_run(with_strategy(cfg, "full"), probe)
    per_example_s = step_seconds_per_example(full_prep, cfg.training.batch_size)
    budget_s = budget.total_s(lambda: per_example_s * len(data.train))

    def left() -> float:
        return budget_s - (time.perf_counter() - start)

    found = candidates(len(data.train), full_prep.groups, full_prep.task.modality == "text")
    epochs = probe_epochs(cfg, probe)

    def estimate(c: Candidate) -> float:
        return len(probes) * estimated_probe_s(c, probe, epochs, per_example_s)

    ranking = PROBE_RANKING if len(probes) > 1 else None
    probe_metric = None

    cheapest = min(map(estimate, found))
    if left() < cheapest:
        raise UserError(f"--budget {budget.text} is too small for any probe: the cheapest candidate "
                        f"({min(found, key=estimate).strategy}) needs "
                        f"about {math.ceil(cheapest)}s to probe on {len(probe.train)} + {len(probe.eval)} examples"
                        f"{f' ({len(probes)} folds)' if len(probes) > 1 else ''}, "
                        f"and {math.ceil(time.perf_counter() - start)}s went on reading the data and timing a step.",
                        f"Pass --budget {math.ceil(time.perf_counter() - start + cheapest) + 1}s or more (the chosen "
                        "plan then needs time to train too), or name a strategy yourself.")
    for c in sorted(found, key=estimate):
        if estimate(c) > left():
            c.decision = "no time left to probe it"
            continue
        measured = [run_probe(cfg, c.strategy, p, epochs, ranking) for p in probes]
        probe_metric = measured[0][0]
        c.probe_score = sum(m[1] for m in measured) / len(measured)
        c.probe_time_s = round(sum(m[2] for m in measured), 2)
        c.trainable_pct = measured[0][3]
    probe_time = time.perf_counter() - start
    scale = len(data.train) / len(probe.train)
    chosen, final_epochs, reason = _decide(found, left(), cfg.training.epochs, scale, epochs, len(probes))
    decision = AutoDecision(chosen.strategy, final_epochs, reason, len(data.train), len(data.labels or []),
                            full_prep.groups.total, budget.text, None if budget_s == math.inf else round(budget_s, 1),
                            len(probe.train), len(probe.eval), epochs, round(probe_time, 1), found, len(probes),
                            probe_metric)
    if on_decided is not None:
        on_decided(decision)
    # the saved config names the chosen plan: re-running it trains that plan as is
    return train_run(with_strategy(cfg, chosen.strategy, epochs=final_epochs), overwrite=overwrite,
                     show_progress=show_progress, on_prepared=on_prepared, data=data,
                     extra={"auto": decision.to_json()})


def explain(cfg: RunConfig) -> tuple[dict, list[Candidate]]:
    """What `train --strategy auto` would read and probe, without training (for `plan --strategy auto`)."""
    data = load_run_data(cfg)
    probes = probe_splits(data, cfg.seed)
    probe = probes[0]
    prep = prepare_run(with_strategy(cfg, "full"), probe)
    facts = {"train examples": f"{len(data.train):,}", "classes": str(len(data.labels or [])),
             "model parameters": f"{prep.groups.total:,}",
             "probe": f"{probe_epochs(cfg, probe):g} epoch(s) on {len(probe.train):,} stratified training examples"
                      f" ({100 * len(probe.train) / len(data.train):.0f}% of the data), scored on "
                      f"{len(probe.eval):,} others" + (f", over {len(probes)} folds (every example scored once; "
                                                        f"ranked by {PROBE_RANKING} where the task reports it)"
                                                        if len(probes) > 1 else ""),
             "budget": cfg.strategy.budget or "none: every candidate is probed, the best trains"}
    return facts, candidates(len(data.train), prep.groups, prep.task.modality == "text")
