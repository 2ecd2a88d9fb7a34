"""What crosses a process boundary pickles: torch_xla's multiprocess launch (``hw=tpu`` on several devices) and
loader workers under ``spawn`` send the data module, the LightningModule and the callbacks to other processes."""

from __future__ import annotations

import pickle
from pathlib import Path

from hydra.utils import instantiate

from tests.conftest import compose
from vit_exp.build import build_model, build_module, prepare


def test_the_parts_of_a_default_run_pickle(tmp_path: Path) -> None:
    cfg = compose("train", [], tmp_path / "run")
    spec, datamodule = prepare(cfg)
    datamodule.setup("fit")
    backbone = build_model(spec, cfg.model)
    module = build_module(cfg, backbone, datamodule, lr=cfg.optim.lr)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    for part in (datamodule, module, *callbacks):
        pickle.dumps(part)  # raises on a closure: "Can't pickle local object ..."
    again = pickle.loads(pickle.dumps(datamodule))
    image, label = datamodule.datasets["val"][0]
    assert (again.datasets["val"][0][0] == image).all() and again.datasets["val"][0][1] == label
