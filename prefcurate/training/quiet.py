"""Keep transformers' training progress bar but not its log dicts on stdout.

Trainer's ProgressCallback writes every `logs` dict (and a final summary) to stdout, which
drowns the CLI's own output; the same numbers already reach MLflow and `log_history`.
"""

from __future__ import annotations

from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback


class BarOnlyProgress(ProgressCallback):
    """The training bar without the per-log prints."""

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - callback hook
        return None


def quiet_trainer(trainer: Trainer) -> Trainer:
    """Swap the printing callbacks of `trainer` for the bar-only one; returns it."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnlyProgress)
    return trainer
