"""Trainer callbacks that say where training is: steps to a `progress(done, total)` callback (a
progress bar), and off a terminal a log line every `logging_steps` with the loss and an ETA."""

from __future__ import annotations

import logging
import time
from typing import Callable

from transformers import TrainerCallback

from prefcurate.progress import eta_line, on_terminal

log = logging.getLogger("prefcurate.training")


class ProgressCallback(TrainerCallback):
    """Feeds a Trainer's (e.g. TRL's DPOTrainer) step count into a `progress(done, total)` callback,
    which an orchestrator turns into a progress bar."""

    def __init__(self, progress: Callable[[int, int], None]):
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress(0, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        self.progress(state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        self.progress(state.max_steps, state.max_steps)


class EtaLogCallback(TrainerCallback):
    """`DPO warmup: 40/120 steps (33%), 12 s elapsed, ETA 24 s, loss 0.612` at every Trainer log
    event — only when stderr is not a terminal (there, the Trainer's own bar shows the same)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.start = time.monotonic()
        self.enabled = not on_terminal()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if self.enabled and loss is not None and state.max_steps:
            log.info(eta_line(self.desc, state.global_step, state.max_steps, time.monotonic() - self.start, "steps",
                              f", loss {float(loss):.4f}"))
