"""``train.py`` on torch_xla's CPU backend: ``PJRT_DEVICE=CPU python tests/xla/cpu_train.py trainer=tpu ...``.

The same command line as ``train.py``; only Lightning's count of XLA devices changes (``vit_exp.compat.
xla_cpu_devices``: it counts TPU chips, and a CPU has none). Not a test module: the xla tests run it.
"""

from vit_exp.cli import train
from vit_exp.compat import xla_cpu_devices

if __name__ == "__main__":
    with xla_cpu_devices():
        train()
