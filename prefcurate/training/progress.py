"""A trainer callback that reports optimiser steps to a `progress(done, total)` callback."""

from __future__ import annotations

from typing import Callable

from transformers import TrainerCallback


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
