"""A callback that kills its own training process (SIGKILL, no clean-up) at a chosen step: the resume tests use it
to interrupt a real `python train.py` run between checkpoints (PYTHONPATH=tests, then
`+callbacks.kill._target_=helpers.kill.KillAtStep`)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
