"""Augmentation reaches the training split only, through the run config's `augment` section."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import tiny_config

from transferlab.config import build_config
from transferlab.errors import UserError
from transferlab.pipeline import augment_train, train_run
from transferlab.tasks import task_class

FRAME = pd.DataFrame({"text": ["A fine, moving film about two brothers.", "Dull and far too long for its story."],
                      "text_pair": ["first", "second"], "label": ["positive", "negative"]})


def test_off_by_default_returns_the_training_frame_unchanged(tmp_path):
    cfg = build_config(tiny_config(tmp_path))
    assert not cfg.augment.enabled
    assert augment_train(cfg, task_class(cfg.task), FRAME) is FRAME


def test_variants_follow_the_originals_and_keep_every_column_of_their_row(tmp_path):
    cfg = build_config(tiny_config(tmp_path, augment={"swap": 0.5, "dropout": 0.2, "copies": 2}))
    out = augment_train(cfg, task_class(cfg.task), FRAME)
    assert len(out) == 3 * len(FRAME)
    pd.testing.assert_frame_equal(out.iloc[:2], FRAME)
    assert out["label"].tolist()[2:] == ["positive", "positive", "negative", "negative"]
    assert out["text_pair"].tolist()[2:] == ["first", "first", "second", "second"]
    assert (out["text"].iloc[2:].to_numpy() != FRAME["text"].repeat(2).to_numpy()).any()
    pd.testing.assert_frame_equal(augment_train(cfg, task_class(cfg.task), FRAME), out)  # seeded


def test_tasks_that_label_parts_of_a_text_refuse_augmentation(tmp_path):
    cfg = build_config(tiny_config(tmp_path, task="tokens", augment={"swap": 0.1}))
    with pytest.raises(UserError, match="augment"):
        augment_train(cfg, task_class(cfg.task), FRAME)


class _Seen(Exception):
    """Stops the run at its first history record, once the trainer's features have been looked at."""


def test_trainer_gets_augmented_train_features_and_untouched_eval_features(tmp_path):
    cfg = build_config(tiny_config(tmp_path, data={"max_train_examples": 40, "max_eval_examples": 20},
                                   model={"max_length": 32}, strategy={"name": "feature-extraction"},
                                   training={"epochs": 1, "batch_size": 8, "log_every": 1},
                                   augment={"swap": 0.3, "copies": 1}))
    seen = {}

    def look(record, trainer):
        seen.update(train=len(trainer.train_set), eval=len(trainer.eval_set))
        raise _Seen

    with pytest.raises(_Seen):
        train_run(cfg, show_progress=False, callbacks=(look,))
    assert seen == {"train": 80, "eval": 20}
