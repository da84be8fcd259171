"""Image augmentation (seeded per example and epoch, training batches only, mixup/cutmix with soft targets),
progressive resizing (a phase's `resolution`) and test-time augmentation (`--tta`), on a tiny random ResNet and
generated pictures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

from transferlab.config import build_config
from transferlab.errors import UserError
from transferlab.pipeline import prepare_run, train_run
from transferlab.tasks.base import TrainingDraw
from transferlab.training.events import Callback
from transferlab.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import test_vision_task  # noqa: E402
from conftest import tiny_config  # noqa: E402
from test_vision_task import SIZE, config  # noqa: E402

# the task tests' tiny random ResNet and generated pictures, as fixtures of this module too
tiny_model, tree = test_vision_task.tiny_model, test_vision_task.tree

LIGHT = {"resolution": SIZE, "augment": {"preset": "light"}}


def prepared(tmp_path: Path, model: Path, data: Path, **sections):
    prep = prepare_run(build_config(config(tmp_path, model, str(data), **sections)))
    return prep.task, prep.task.encode(prep.data.train), prep.task.encode(prep.data.eval)


def trainer(tmp_path: Path, model: Path, data: Path, callbacks=(), **sections) -> Trainer:
    """The trainer of a run, without the pipeline's artefacts (plots, report, saved model): seconds."""
    cfg = build_config(config(tmp_path, model, str(data), **sections))
    set_seed(cfg.seed)
    prep = prepare_run(cfg)
    encoded = [prep.task.encoded(frame) for frame in (prep.data.train, prep.data.eval)]
    return Trainer(prep.model, prep.task, prep.groups, prep.phases, *encoded, cfg.training, cfg.seed, cfg.run_dir,
                   Accelerator(), callbacks=callbacks, show_progress=False)


def records(run: Trainer, kind: str) -> list[dict]:
    return [r for r in run.history if r["kind"] == kind]


class Batches(Callback):
    """Records the pixel batches the model sees: (phase, training?, pixels) for every forward pass; the passes that
    re-estimate batch-norm statistics before an evaluation (training/batch_norm.py) go to `recalibrating`."""

    def __init__(self):
        self.seen: list[tuple[int, bool, torch.Tensor]] = []
        self.recalibrating: list[torch.Tensor] = []

    def on_fit_start(self, trainer) -> None:
        def record(module, args, kwargs):
            if kwargs.get("pixel_values") is None:
                return
            if not module.training and any(m.training for m in module.modules()):
                self.recalibrating.append(kwargs["pixel_values"].detach().clone())
            else:
                self.seen.append((trainer.state.phase, module.training, kwargs["pixel_values"].detach().clone()))

        trainer.model.register_forward_pre_hook(record, with_kwargs=True)


# ---- augmentation ---------------------------------------------------------------------------------------------
def test_augmentation_is_fixed_by_seed_phase_epoch_and_example(tmp_path, tiny_model, tree):
    task, train, _ = prepared(tmp_path, tiny_model, tree, image=LIGHT)
    indices = [0, 1, 2, 3]
    first = task.collate_train(train[:4], indices, TrainingDraw(3, 0, 0))["pixel_values"]
    assert first.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(first, task.collate_train(train[:4], indices, TrainingDraw(3, 0, 0))["pixel_values"])
    plain = task.collate(train[:4])["pixel_values"]
    assert all(not torch.allclose(first[i], plain[i]) for i in range(4))  # every image is augmented
    for other in (TrainingDraw(3, 0, 1), TrainingDraw(3, 1, 0), TrainingDraw(4, 0, 0)):  # epoch, phase, seed
        again = task.collate_train(train[:4], indices, other)["pixel_values"]
        assert all(not torch.equal(first[i], again[i]) for i in range(4))
    # an example's variant depends on its position only, not on the batch it falls in (what makes resume exact)
    alone = task.collate_train([train[2]], [2], TrainingDraw(3, 0, 0))["pixel_values"]
    assert torch.equal(alone[0], first[2])
    # off: a training batch is the evaluation batch
    task, train, _ = prepared(tmp_path, tiny_model, tree)
    assert torch.equal(task.collate_train(train[:4], indices, TrainingDraw(3, 0, 0))["pixel_values"],
                       task.collate(train[:4])["pixel_values"])


@pytest.mark.parametrize("mixing", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one(mixing, tmp_path, tiny_model, tree):
    task, train, _ = prepared(tmp_path, tiny_model, tree, image={"resolution": SIZE, "augment": mixing})
    batch = task.collate_train(train[:12], list(range(12)), TrainingDraw(3, 0, 0))
    plain = task.collate(train[:12])
    targets = batch["labels"]
    assert targets.shape == (12, 3) and targets.dtype == torch.float32
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(12))
    assert (targets.max(dim=1).values < 1).any()  # some examples are mixed
    assert torch.equal(targets.argmax(dim=1)[targets.max(dim=1).values == 1],
                       plain["labels"][targets.max(dim=1).values == 1])  # the unmixed keep their class
    assert not torch.equal(batch["pixel_values"], plain["pixel_values"])
    # the model's loss takes the soft targets
    model = prepare_run(build_config(config(tmp_path, tiny_model, str(tree)))).model
    assert torch.isfinite(model(**batch).loss)


def test_a_run_with_augmentation_and_mixing_trains_and_never_augments_evaluation(tmp_path, tiny_model, tree):
    seen = Batches()
    run = trainer(tmp_path, tiny_model, tree, callbacks=(seen,),
                  image={"resolution": SIZE, "augment": {"preset": "strong", "cutmix": 1.0}})
    state = run.train()
    losses = [r["loss"] for r in records(run, "train")]
    assert state.global_step == 6 and losses and all(np.isfinite(losses))
    expected = run.task.collate(run.eval_set.features)["pixel_values"]
    evaluated = [pixels for _, training, pixels in seen.seen if not training]
    assert evaluated and all(_same_images(pixels, expected) for pixels in evaluated)
    trained = torch.cat([pixels for _, training, pixels in seen.seen if training])
    assert len(trained) == 2 * 18  # two epochs, and no training image is left as evaluation shows it
    plain = run.task.collate(run.train_set.features)["pixel_values"]
    assert not any(torch.equal(t, p) for t in trained for p in plain)
    # batch-norm statistics are re-estimated on training images as evaluation frames them, never augmented ones
    assert seen.recalibrating and all(any(torch.equal(r, p) for p in plain) for b in seen.recalibrating for r in b)


def _same_images(batch: torch.Tensor, reference: torch.Tensor) -> bool:
    """Every image of `batch` is one of `reference` (the eval loader may order them otherwise)."""
    return all(any(torch.equal(image, r) for r in reference) for image in batch)


def test_an_interrupted_augmented_run_resumes_to_the_same_weights(tmp_path, tiny_model, tree):
    class Killed(Exception):
        pass

    def kill_at_step_4(record, trainer):
        if record["kind"] == "train" and record["step"] == 4:
            raise Killed

    options = {"image": {"resolution": SIZE, "augment": {"preset": "light", "mixup": 0.4}},
               "training": {"epochs": 2, "batch_size": 6, "log_every": 1, "save_every": 2}}
    straight = trainer(tmp_path / "straight", tiny_model, tree, **options)
    straight.train()
    with pytest.raises(Killed):  # checkpoints at steps 2 and 3 (the first epoch's end): resume replays step 4
        trainer(tmp_path / "cut", tiny_model, tree, callbacks=(kill_at_step_4,), **options).train()
    resumed = trainer(tmp_path / "cut", tiny_model, tree, **options)
    resumed.train(resume=True)
    assert [r["loss"] for r in records(resumed, "train")] == pytest.approx([r["loss"] for r in
                                                                            records(straight, "train")])
    reference = straight.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-6)


def test_augmentation_keeps_the_training_examples_out_of_the_feature_cache(tmp_path, tiny_model, tree, caplog):
    run = trainer(tmp_path, tiny_model, tree, strategy={"name": "feature-extraction", "head_lr": 0.05}, image=LIGHT)
    with caplog.at_level("INFO", logger="transferlab"):
        run.train()
    [cache] = records(run, "cache")
    assert not cache["cached"]
    assert "off for training, since image.augment (flip, crop 0.7-1, rotation 10, colour jitter 0.2) changes the " \
           "training images every epoch" in cache["message"] and "the eval examples are cached" in cache["message"]
    assert cache["message"] in caplog.text


# ---- progressive resizing ---------------------------------------------------------------------------------------
PHASES = [{"name": "small", "epochs": 1, "lrs": {"*": 3e-3}, "resolution": 16},
          {"name": "full size", "epochs": 1, "lrs": {"*": 3e-3}}]


def test_each_phase_trains_at_its_resolution_and_evaluation_at_the_runs(tmp_path, tiny_model, tree):
    seen = Batches()
    run = trainer(tmp_path, tiny_model, tree, callbacks=(seen,), strategy={"phases": PHASES})
    run.train()
    sizes = {(phase, training, pixels.shape[-1]) for phase, training, pixels in seen.seen}
    assert {(p, s) for p, training, s in sizes if training} == {(0, 16), (1, SIZE)}
    assert {s for _, training, s in sizes if not training} == {SIZE}
    assert [p.summary(i).get("resolution") for i, p in enumerate(run.phases)] == [16, None]  # metrics.json's plan
    assert run.task.processor.resolution == SIZE  # what the model is saved with


def test_plan_shows_each_phases_resolution(tmp_path, tiny_model, tree, transferlab_cli, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text(json.dumps({"task": "image-classification", "model": {"name": str(tiny_model)},
                                "data": {"train": str(tree)}, "image": {"resolution": SIZE},
                                "strategy": {"phases": PHASES}}))
    assert transferlab_cli("plan", "--config", path) == 0
    out = capsys.readouterr().out
    assert "resolution" in out and "16 px" in out and "the run's" in out


def test_the_cache_of_a_small_phase_holds_small_images(tmp_path, tiny_model, tree):
    phases = [{"name": "small", "epochs": 2, "lrs": {"head": 0.05}, "resolution": 16},
              {"name": "full size", "epochs": 2, "lrs": {"head": 0.05}}]
    run = trainer(tmp_path, tiny_model, tree, strategy={"phases": phases})
    run.train()
    small, full = records(run, "cache")
    assert small["cached"] and full["cached"]
    assert "training images at 16 px, evaluation at the run's resolution" in small["message"]
    assert "16 px" not in full["message"]


def test_a_resolution_on_a_text_phase_is_refused_naming_the_phase(tmp_path, tiny_bert):
    phases = [{"name": "warm up", "lrs": {"head": 1e-3}}, {"name": "small", "lrs": {"head": 1e-3}, "resolution": 64}]
    cfg = build_config(tiny_config(tmp_path, model={"name": str(tiny_bert), "max_length": 32},
                                   strategy={"phases": phases}, data={"max_train_examples": 20,
                                                                      "max_eval_examples": 10}))
    with pytest.raises(UserError, match=r"Phase 2 \('small'\) of 'custom' sets resolution: 64, but task "
                                        "'classification' reads text inputs"):
        prepare_run(cfg)


# ---- test-time augmentation ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model, tree) -> Path:
    root = tmp_path_factory.mktemp("runs")
    cfg = build_config(config(root, tiny_model, str(tree), training={"epochs": 3, "batch_size": 6},
                              strategy={"name": "full", "lr": 3e-3, "head_lr": 3e-3}))
    train_run(cfg, show_progress=False)
    return cfg.run_dir


def stripes(seed: int) -> Image.Image:
    """Rows of random colours, each row one colour: its mirror image is itself, at any size and crop."""
    rows = np.random.default_rng(seed).integers(0, 256, (24, 1, 3), dtype=np.uint8)
    return Image.fromarray(np.repeat(rows, 30, axis=1))


def test_tta_averages_the_probabilities_of_an_image_and_its_mirror(trained_run, tmp_path):
    from transferlab.deploy.predictor import Predictor

    plain, flip, crops = Predictor(trained_run), Predictor(trained_run, tta="flip"), Predictor(trained_run, tta="crops")
    paths = []
    for i in range(3):
        stripes(i).save(tmp_path / f"stripes{i}.png")
        paths.append(tmp_path / f"stripes{i}.png")
    rows = [{"image": str(p)} for p in paths]
    pixels = plain.task.collate(plain.task.encode(plain.frame(rows)))["pixel_values"]
    assert torch.equal(pixels, pixels.flip(-1))  # flip-invariant, as the model sees them
    np.testing.assert_allclose(flip.outputs(rows)["logits"], np.log(_probabilities(plain, rows)), atol=1e-5)

    halves = np.zeros((20, 20, 3), dtype=np.uint8)
    halves[:, :10] = (230, 20, 20)
    halves[:, 10:] = (20, 20, 230)
    Image.fromarray(halves).save(tmp_path / "halves.png")
    row = [{"image": str(tmp_path / "halves.png")}]
    pixels = plain.task.collate(plain.task.encode(plain.frame(row)))["pixel_values"]
    one, mirrored = (plain.run({"pixel_values": view}).logits.softmax(-1)[0].numpy()
                     for view in (pixels, pixels.flip(-1)))
    averaged = _probabilities(flip, row)[0]
    np.testing.assert_allclose(averaged, (one + mirrored) / 2, atol=1e-5)
    assert np.abs(one - mirrored).max() > 1e-4  # the mirror image did change the prediction
    six = _probabilities(crops, row)[0]
    assert abs(six.sum() - 1) < 1e-5 and np.abs(six - averaged).max() > 1e-6


def _probabilities(predictor, rows) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in predictor.predict(rows)])


def test_evaluate_and_predict_record_tta(trained_run, tree, tmp_path, transferlab_cli, capsys):
    out = tmp_path / "metrics.json"
    assert transferlab_cli("evaluate", trained_run, "--data", tree, "--tta", "flip", "--output", out) == 0
    captured = capsys.readouterr()
    assert "test-time augmentation flip" in " ".join(captured.out.split())
    assert "test-time augmentation: flip (mean class probabilities over the image and its mirror image)" in \
        captured.err
    metrics = json.loads(out.read_text())
    assert metrics["tta"] == {"mode": "flip", "averages": "the image and its mirror image"}
    assert 0 <= metrics["accuracy"] <= 1
    assert "tta" not in json.loads((trained_run / "metrics.json").read_text())["eval"]
    assert transferlab_cli("predict", trained_run, tree / "red" / "0.png", "--tta", "crops") == 0
    captured = capsys.readouterr()
    assert "test-time augmentation: crops" in captured.err and captured.out.strip().endswith("red/0.png")


# ---- bad options ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("image.augment.crop_scale=[0.9, 0.5]", "'image.augment.crop_scale': Value error, crop_scale must be two shares"),
    ("image.augment.crop_scale=[0, 1]", "0 < low <= high <= 1"),
    ("image.augment.rotation=-5", "'image.augment.rotation': Input should be greater than or equal to 0"),
    ("image.augment.color_jitter=2", "'image.augment.color_jitter': Input should be less than or equal to 1"),
    ("image.augment.mixup=-1", "'image.augment.mixup'"),
    ("image.augment.preset=heavy", "'image.augment.preset': Input should be 'none', 'light' or 'strong'"),
    ("image.augment.flips=true", "'image.augment.flips': Extra inputs are not permitted"),
    ("strategy.phases=[{lrs: {head: 0.001}, resolution: 8}]", "'strategy.phases.0.resolution'"),
])
def test_bad_augmentation_options_stop_with_exit_2(override, message, tmp_path, tiny_model, tree, transferlab_cli,
                                                   capsys):
    code = transferlab_cli("train", "--task", "image-classification", "--model", tiny_model, "--data", tree,
                           "--output", tmp_path / "runs", "--set", override)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_text_augmentation_on_images_points_to_image_augment(tmp_path, tiny_model, tree, transferlab_cli, capsys):
    code = transferlab_cli("train", "--task", "image-classification", "--model", tiny_model, "--data", tree,
                           "--output", tmp_path / "runs", "--augment", "--set", f"image.resolution={SIZE}")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "which rewords texts, but task 'image-classification' reads images" in err, err
    assert "--set image.augment.preset=light" in err


def test_tta_on_a_model_without_it_or_an_unknown_mode_is_refused(trained_run, tmp_path, tiny_bert):
    from transferlab.deploy.predictor import Predictor

    with pytest.raises(UserError, match=r"--tta 'mirror' is no test-time augmentation of image-classification "
                                        r"models.*flip \(the image and its mirror image\)"):
        Predictor(trained_run, tta="mirror")
    cfg = build_config(tiny_config(tmp_path, model={"name": str(tiny_bert), "max_length": 32},
                                   data={"max_train_examples": 20, "max_eval_examples": 10},
                                   doctor={"enabled": False}))
    train_run(cfg, show_progress=False)
    with pytest.raises(UserError, match="--tta flip: classification models .* have no test-time augmentation"):
        Predictor(cfg.run_dir, tta="flip")
