"""One process of a multi-process DPO run: `accelerate launch -m prefcurate.training.worker JOB`.

Reads the job `prefcurate.training.launch` wrote, runs `train_dpo` (DDP through TRL/accelerate:
the main process saves), and from the main process writes `result.json`. Dies with its launcher.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the launcher) dies, even by kill -9."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


die_with_parent()  # first, before the seconds of importing torch and TRL

import pandas as pd  # noqa: E402

from prefcurate.config import ModelSource, TrainingConfig  # noqa: E402
from prefcurate.data.pairs import read_pairs  # noqa: E402
from prefcurate.tracking import MlflowMetricsCallback, RunHandle  # noqa: E402
from prefcurate.training.dpo import train_dpo  # noqa: E402
from prefcurate.training.progress import EtaLogCallback  # noqa: E402


def _source(value):
    return ModelSource.model_validate(value) if isinstance(value, dict) else value


def main(job_dir: str) -> None:
    job = Path(job_dir)
    spec = json.loads((job / "job.json").read_text())
    ref = job / "ref_logps.parquet"
    callbacks = [EtaLogCallback(f"DPO {spec['stage'] or 'training'}")]
    if spec["tracking"] is not None:  # logs from world process zero only
        callbacks.append(MlflowMetricsCallback(RunHandle.model_validate(spec["tracking"])))
    result = train_dpo(
        _source(spec["model_dir"]), read_pairs(str(job / "pairs.parquet")), spec["out_dir"],
        TrainingConfig.model_validate(spec["training"]), epochs=spec["epochs"],
        ref_logps=pd.read_parquet(ref) if ref.is_file() else None, reference_dir=_source(spec["reference_dir"]),
        stage=spec["stage"], callbacks=callbacks, metadata=spec["metadata"], device=spec["device"],
    )  # fmt: skip
    if result.fingerprint:  # the main process saved the checkpoint
        (job / "result.json").write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(sys.argv[1])
