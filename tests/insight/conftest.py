"""One short training run on the embedded digits with the insight callbacks, shared by the tests of this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY, compose
from vit_exp import run
from vit_exp.results import Results

# vit_test (28k parameters) for 6 epochs of the digits: ~114 steps, about a minute of CPU at most.
SHORT_RUN = TINY + [
    "trainer.max_epochs=6",
    "++trainer.limit_train_batches=1.0",
    "trainer.log_every_n_steps=5",
    "optim.lr=5e-3",
    "sched.warmup_steps=10",
    "logger=tensorboard",  # TensorBoard takes images; it adds the CSV logger
    "callbacks=insight",
    "callbacks.fewshot.every_n_steps=50",
    "callbacks.fewshot.shots=[1,10]",
    "callbacks.attention_images.every_n_epochs=3",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """The results of a short digits run (callbacks=insight, logger=tensorboard); its files are in ``run_dir``."""
    run_dir = tmp_path_factory.mktemp("insight") / "run"
    return run.train(compose("train", SHORT_RUN, Path(run_dir)))
