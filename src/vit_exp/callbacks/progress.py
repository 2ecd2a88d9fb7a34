"""``progress_bar``: Lightning's Rich progress bar, redrawn as often as a terminal needs, not 100 times a second."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


def progress_bar(refresh_per_second: int = 4, enabled: bool = True) -> RichProgressBar | None:
    """The ``callbacks.progress_bar`` node of ``conf/callbacks/default.yaml``.

    Lightning's ``RichProgressBar`` redraws up to 100 times a second (its ``refresh_rate``). In a terminal each redraw
    takes the GIL for milliseconds, and the default CPU run's step slows by several percent: ``python -m
    vit_exp.bench_loop --progress-bar callbacks.progress_bar.refresh_per_second=N`` in a terminal measures it (the
    README has the figures). 4 is what Rich's ``Live`` redraws by default.

    Args:
        refresh_per_second: Redraws a second at most.
        enabled: False (``trainer.enable_progress_bar=false``, ``hw=tpu``): no bar; None is returned, as Lightning
            refuses a progress-bar callback beside a trainer whose bar is off.
    """
    return RichProgressBar(refresh_rate=refresh_per_second) if enabled else None
