"""The trainer's built-in callbacks: history, the training loss at evaluations, best weights, early stopping, weight
change, progress, checkpoints."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from transferlab.training.events import Callback
from transferlab.training.monitor import WeightChange


class History(Callback):
    """Keeps every record in `trainer.history` (what history.jsonl, the plots and the doctor read)."""

    order = -100  # first: the other callbacks see the record already in the history

    def on_record(self, trainer, record: dict) -> None:
        trainer.history.append(record)


class LossAtEvaluation(Callback):
    """Records the training loss (with the lrs and gradient norm) at each evaluation and at the end of each epoch
    (the last one ends its phase) when steps ran since the last train record, so that a run shorter than
    `log_every` steps still has a learning curve, an lr plot and a gradient-norm plot, and each eval point has a
    training loss beside it."""

    order = 5  # before the callbacks that read the history at these events, and before checkpoints

    def on_evaluate(self, trainer, record: dict) -> None:
        trainer.log_train()

    def on_epoch_end(self, trainer) -> None:
        trainer.log_train()


class BestWeights(Callback):
    """Tracks the best evaluation of the selection metric, keeps those weights, and ends the run with them."""

    order = 10

    def on_evaluate(self, trainer, record: dict) -> None:
        st = trainer.state
        value = record["loss"] if trainer.metric == "loss" else record["metrics"].get(trainer.metric)
        if value is None:
            return
        better = st.best_metric is None or (value > st.best_metric if trainer.greater_is_better
                                            else value < st.best_metric)
        if better:
            st.best_metric, st.best_step, st.bad_evals = float(value), st.global_step, 0
            st.best_phase = st.phase
            trainer.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            st.bad_evals += 1

    def on_fit_end(self, trainer) -> None:
        if trainer.best_state is not None and trainer.config.restore_best:
            trainer.model.load_state_dict(trainer.best_state)


class EarlyStopping(Callback):
    """Stops training after `early_stopping_patience` evaluations without improvement."""

    order = 20

    def on_evaluate(self, trainer, record: dict) -> None:
        patience = trainer.config.early_stopping_patience
        if patience and trainer.state.bad_evals >= patience:
            trainer.state.stopped_early = True


class WeightChangeMonitor(Callback):
    """Relative distance of each group from its starting weights, after each evaluation and at each phase end."""

    order = 30

    def __init__(self):
        self.measure: WeightChange | None = None

    def on_fit_start(self, trainer) -> None:
        # the starting weights, taken before a resume loads trained ones (the model is built fresh each run)
        self.measure = WeightChange(trainer.groups, {g for p in trainer.phases for g in p.lrs})

    def on_evaluate(self, trainer, record: dict) -> None:
        self._record(trainer, trainer.state.phase)

    def on_phase_end(self, trainer, phase: int) -> None:
        self._record(trainer, phase)

    def _record(self, trainer, phase: int) -> None:
        step, last = trainer.state.global_step, trainer.history[-1] if trainer.history else {}
        if last.get("kind") == "monitor" and last.get("step") == step:
            return  # once per step
        trainer.record({"kind": "monitor", "step": step, "phase": phase, "weight_change": self.measure.measure()})


class ProgressBar(Callback):
    """A live progress bar on the console: phase, steps, the last training loss, time left."""

    order = 100
    main_process_only = True

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress: Progress | None = None
        self.bar = None

    def on_fit_start(self, trainer) -> None:
        if not self.enabled:
            return
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.progress = Progress(*columns, transient=False)
        self.progress.start()
        self.bar = self.progress.add_task("training", total=trainer.total_steps, completed=trainer.state.global_step,
                                          info="")

    def on_phase_start(self, trainer, phase: int) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, description=f"phase {phase + 1}/{len(trainer.phases)}")

    def on_step_end(self, trainer, record: dict | None) -> None:
        if self.progress is not None:
            loss = trainer.last_loss
            self.progress.update(self.bar, completed=trainer.state.global_step,
                                 info=f"loss {loss:.4f}" if loss is not None else "")

    def on_fit_end(self, trainer) -> None:
        self.close()

    def on_fit_abort(self, trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Checkpointer(Callback):
    """Saves a resumable checkpoint every `save_every` steps, at the end of each epoch that does not end its phase,
    and at the end of each phase (atomic: a kill leaves the previous checkpoint intact)."""

    order = 90  # after every callback that adds to the history or the state the checkpoint captures

    def on_step_end(self, trainer, record: dict | None) -> None:
        every = trainer.config.save_every
        if every and trainer.state.global_step % every == 0:
            trainer.save_checkpoint()

    def on_epoch_end(self, trainer) -> None:
        st = trainer.state
        if st.step_in_epoch == 0 and st.phase_step < trainer.phase_steps(st.phase) and not st.stopped_early:
            trainer.save_checkpoint()

    def on_phase_end(self, trainer, phase: int) -> None:
        trainer.save_checkpoint()

