"""``FSDPStrategy`` on CPU processes over gloo, for tests only (``trainer.strategy._target_=...CPUFSDPStrategy``).

Lightning allows FSDP on CUDA only: its accelerator connector rejects ``type(strategy) is FSDPStrategy`` with a
CPU accelerator (a subclass is not checked), and it hands FSDP ``device_id=None`` on the CPU, which torch's
FSDP refuses ("FSDP needs a non-CPU accelerator device"). torch's FSDP itself runs on the CPU with gloo when it
is given ``device_id=cpu``: wrapping the model that way first lets the rest of Lightning's strategy (sharded
checkpoints, optimizer state, resume) run unchanged. It subclasses the strategy that ``hw=fsdp`` uses
(``AtomicFSDPStrategy``), so that the tests run its atomic sharded saves.
"""

from __future__ import annotations

import torch
from torch import nn

from vit_exp.checkpoints.atomic import AtomicFSDPStrategy


class CPUFSDPStrategy(AtomicFSDPStrategy):
    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if self.root_device.type == "cpu" and not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
        return super()._setup_model(model)  # wrapped already: Lightning keeps the wrapping, warns, goes on
