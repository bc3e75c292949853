"""DPO across processes: `accelerate launch` as a subprocess of the stage, one job directory between them.

With `training.num_processes > 1` the stage does not train in its own process: it writes the
job (pairs, π_ref's log-probs, the arguments of `train_dpo`) to a local directory and runs
`python -m accelerate.commands.launch … -m prefcurate.training.worker JOB` (DDP: gloo on CPU,
nccl on GPUs; `training.accelerate_config` hands FSDP/DeepSpeed/multi-node settings to
accelerate). Every process runs `train_dpo`; only the main one saves the checkpoint, logs the
curves to MLflow and writes `result.json`. The stage's manifest is written by the caller after
the launcher exits 0, so a killed launcher leaves no manifest and the stage trains again.

The launcher runs in a session of its own, its descendants are watched while it runs and killed
when it ends, and the workers die with it (PR_SET_PDEATHSIG), so a failed or killed launch leaves
no process behind; a failure is one TrainingError line with the
tail of the launcher's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import psutil  # accelerate's own dependency
from datasets import Dataset

from prefcurate.config import ModelSource, TrainingConfig
from prefcurate.data.pairs import write_pairs
from prefcurate.errors import ConfigError, TrainingError
from prefcurate.tracking import RunHandle
from prefcurate.training.dpo import TrainResult, train_dpo

TAIL_LINES = 8
POLL_SECONDS = 0.2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source(value: str | ModelSource | None) -> Any:
    return value.model_dump(mode="json") if isinstance(value, ModelSource) else value


def write_job(job: Path, *, model_dir: str | ModelSource, pairs: Dataset, out_dir: str, training: TrainingConfig,
              epochs: float, ref_logps: pd.DataFrame | None, reference_dir: str | ModelSource | None, stage: str | None,
              metadata: dict | None, device: str, tracking: RunHandle | None) -> None:
    """Everything a worker needs, as files: the pairs and reference frame as parquet, the rest as job.json."""
    write_pairs(pairs, str(job / "pairs.parquet"))
    if ref_logps is not None:
        ref_logps.to_parquet(job / "ref_logps.parquet")
    spec = {"model_dir": _source(model_dir), "reference_dir": _source(reference_dir), "out_dir": out_dir,
            "training": training.model_dump(mode="json"), "epochs": epochs, "stage": stage, "metadata": metadata,
            "device": device, "tracking": tracking.model_dump(mode="json") if tracking is not None else None}
    (job / "job.json").write_text(json.dumps(spec))


def launch_command(job: Path, training: TrainingConfig) -> list[str]:
    """`python -m accelerate.commands.launch` for `training.num_processes` local processes (or the config file's setup)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if training.accelerate_config is not None:
        if not Path(training.accelerate_config).is_file():
            raise ConfigError(f"training.accelerate_config={training.accelerate_config} is not a file; "
                              "write one with `accelerate config --config_file PATH`")
        cmd += ["--config_file", training.accelerate_config]
    else:  # accelerate's --cpu is one process: --multi_gpu is its torchrun path, gloo on CPU (TRL's use_cpu)
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    cmd += ["--num_processes", str(training.num_processes), "--main_process_port", str(_free_port()),
            "-m", "prefcurate.training.worker", str(job)]
    return cmd


def _tail(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:]) or "(empty log)"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=POLL_SECONDS)
    except subprocess.TimeoutExpired:
        return None


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def run_launcher(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run the launcher in its own process group, logging to `log`; whatever happens, no process of
    that group outlives this call. A non-zero exit is a TrainingError with the log's tail."""
    seen: dict[int, psutil.Process] = {}  # torchrun puts workers in sessions of their own: remember them
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            while (code := _wait(proc)) is None:
                seen.update((p.pid, p) for p in _descendants(proc.pid))
        finally:
            _kill_group(proc.pid)
            for child in seen.values():
                with contextlib.suppress(psutil.Error):
                    child.kill()  # psutil checks the create time: a reused pid is left alone
            proc.wait()
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        raise TrainingError(f"the training launcher {how}; the stage left no manifest (rerun it); log tail: {_tail(log)}")


def train_distributed(model_dir: str | ModelSource, pairs: Dataset, out_dir: str, training: TrainingConfig, *,
                      epochs: float, ref_logps: pd.DataFrame | None = None,
                      reference_dir: str | ModelSource | None = None, stage: str | None = None,
                      metadata: dict | None = None, device: str = "auto",
                      tracking: RunHandle | None = None) -> TrainResult:
    """`train_dpo` in `training.num_processes` processes under accelerate; the main process's result.

    `tracking` is the MLflow run the main process logs TRL's curves into (once, by run id).
    """
    job = Path(tempfile.mkdtemp(prefix="prefcurate-ddp-"))
    try:
        write_job(job, model_dir=model_dir, pairs=pairs, out_dir=out_dir, training=training, epochs=epochs,
                  ref_logps=ref_logps, reference_dir=reference_dir, stage=stage, metadata=metadata, device=device,
                  tracking=tracking)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        run_launcher(launch_command(job, training), job / "launcher.log", env)
        result = job / "result.json"
        if not result.is_file():
            raise TrainingError(f"training launcher exited 0 but the main process wrote no result; log tail: "
                                f"{_tail(job / 'launcher.log')}")
        return TrainResult(**json.loads(result.read_text()))
    finally:
        shutil.rmtree(job, ignore_errors=True)


def train(model_dir: str | ModelSource, pairs: Dataset, out_dir: str, training: TrainingConfig, *, epochs: float,
          tracking: RunHandle | None = None, callbacks: list | None = None, **kwargs: Any) -> TrainResult:
    """`train_dpo` here (one process, with `callbacks`), or across `training.num_processes` processes
    (the workers make their own callbacks: the ETA log line and, with `tracking`, MLflow's curves)."""
    if training.num_processes > 1:
        return train_distributed(model_dir, pairs, out_dir, training, epochs=epochs, tracking=tracking, **kwargs)
    return train_dpo(model_dir, pairs, out_dir, training, epochs=epochs, callbacks=callbacks, **kwargs)
