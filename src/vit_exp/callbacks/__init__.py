"""Our Lightning callbacks, one module each; the config chooses them (``conf/callbacks/*.yaml``, next to
Lightning's own ``ModelCheckpoint`` and ``LearningRateMonitor``).

``Preemption``          save ``last.ckpt`` and exit cleanly on SIGTERM/SIGUSR1 (``preemption``)
``NonFiniteLossGuard``  stop, or skip the update, on a NaN/Inf loss or gradient (``nan_guard``)
``ExactResume``         what Lightning leaves out of a resume: random generators, the loader's position (``exact_resume``)
``Throughput``          training images per second (``throughput``)
``BestCheckpoint``      the best checkpoint, a tie going to the later one (``best_checkpoint``)
``EMA``                 an exponential moving average of the weights, validated and checkpointed (``ema``)
``FlexiPatchSizes``     FlexiViT: a patch size per training step from ``model.flexi.patch_sizes`` (``flexi``)
``FewShotEval``         few-shot top-1 of the frozen features while training (``fewshot``)
``AttentionImages``     attention maps of validation images, to the loggers that take images (``attention``)
``RunPlots``            ``curves.png`` and ``confusion_matrix.png`` in the run directory (``plots``)
``progress_bar``        Lightning's Rich progress bar at 4 redraws a second (``progress_bar``)
"""

from vit_exp.callbacks.attention import AttentionImages
from vit_exp.callbacks.best_checkpoint import BestCheckpoint
from vit_exp.callbacks.ema import EMA, ema_callback
from vit_exp.callbacks.exact_resume import ExactResume
from vit_exp.callbacks.fewshot import FewShotEval
from vit_exp.callbacks.flexi import FlexiPatchSizes
from vit_exp.callbacks.nan_guard import NonFiniteLossGuard
from vit_exp.callbacks.plots import RunPlots
from vit_exp.callbacks.preemption import Preemption
from vit_exp.callbacks.progress import progress_bar
from vit_exp.callbacks.throughput import Throughput

__all__ = [
    "AttentionImages",
    "BestCheckpoint",
    "EMA",
    "ExactResume",
    "FewShotEval",
    "FlexiPatchSizes",
    "NonFiniteLossGuard",
    "Preemption",
    "RunPlots",
    "Throughput",
    "ema_callback",
    "progress_bar",
]
