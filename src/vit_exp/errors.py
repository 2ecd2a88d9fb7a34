"""Every error a user can cause, in one leaf module that imports nothing of ours.

The command-line entry points (``vit_exp.cli``) turn each of these into one ``error: ...`` line that names the
key, the bad value and the fix; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A composed config that cannot run; the message says what to change."""


class HardwareError(RuntimeError):
    """The hardware profile (``hw=...``) asks for a device that this machine does not have."""


class NonFiniteLossError(RuntimeError):
    """The training loss (or a gradient) became NaN or infinite; the message says where and what to try."""


class RankFailedError(RuntimeError):
    """A DDP rank other than this process's exited with an error, so the job cannot go on."""


class Preempted(SystemExit):
    """The run saved its state after a preemption signal and stops; a clean exit (status 0 by default)."""


USER_ERRORS = (ConfigError, HardwareError, NonFiniteLossError, RankFailedError)  # one `error:` line, no traceback
