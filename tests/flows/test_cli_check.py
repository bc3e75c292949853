"""`prefcurate data check` / `model check`: exit 0 with a summary when usable, exit 2 with
exactly one stderr line (no traceback) when not, and clean JSON on stdout with --json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from prefcurate.flows.cli import app
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import CHAT_TEMPLATE, build_tokenizer

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def uf_row(i):
    prompt = f"repeat river {i % 4}"
    return {
        "prompt": prompt,
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "river done"}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"um {i}"}],
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size="small")
    path = tmp_path_factory.mktemp("cli") / "ckpt"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_data_check_summary_and_json(tmp_path):
    rows = [uf_row(i) for i in range(6)] + [uf_row(0)]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    human = runner.invoke(app, ["data", "check", str(path)])
    assert human.exit_code == 0, human.output
    assert "rows read 7, kept 6, rejected 1" in human.stdout and "duplicate_pair" in human.stdout
    as_json = runner.invoke(app, ["data", "check", str(path), "--json"])
    summary = json.loads(as_json.stdout)
    assert {k: summary[k] for k in ("rows_read", "rows_kept", "rows_rejected", "rejects_by_reason")} == {
        "rows_read": 7, "rows_kept": 6, "rows_rejected": 1, "rejects_by_reason": {"duplicate_pair": 1}
    }


def test_data_check_with_a_model_reports_token_lengths(tmp_path, checkpoint):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(uf_row(i)) for i in range(6)) + "\n")
    args = ["data", "check", str(path), "--model", str(checkpoint[0]), "--max-length", "8"]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    lengths = json.loads(as_json.stdout)["lengths"]
    assert lengths["n_pairs"] == 6 and lengths["max_length"] == 8 and lengths["truncation_mode"] == "keep_start"
    assert lengths["n_truncated"] == 6 and set(lengths["tokens"]) == {"prompt", "response", "sequence"}
    human = runner.invoke(app, args)
    assert "token lengths of 6 pairs" in human.stdout and "max_length 8 (keep_start): 6 pairs truncated" in human.stdout
    assert_one_line_error(runner.invoke(app, ["data", "check", str(path), "--model", str(tmp_path / "none")]), "does not exist")


def test_data_check_max_prompt_chars(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(uf_row(i)) for i in range(3)))
    result = runner.invoke(app, ["data", "check", str(path), "--max-prompt-chars", "5", "--json"])
    assert_one_line_error(result, "no usable pairs among 3 rows", "prompt_too_long")
    assert json.loads(result.stdout)["rejects_by_reason"] == {"prompt_too_long": 3}


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("missing.parquet", None, "does not exist"),
        ("corrupt.parquet", b"garbage", "not a readable parquet"),
        ("bad.json", b"[{", "not valid JSON"),
        ("unknown.jsonl", b'{"question": "q"}\n', "unknown schema"),
        ("empty.jsonl", b'{"prompt": "p", "chosen": "same", "rejected": "same"}\n', "no usable pairs"),
    ],
)
def test_data_check_bad_input(tmp_path, name, content, fragment):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert_one_line_error(runner.invoke(app, ["data", "check", str(tmp_path / name)]), fragment)


def test_data_check_missing_bucket(moto_s3):
    assert_one_line_error(runner.invoke(app, ["data", "check", "s3://no-such-bucket/pool.parquet"]), "no-such-bucket")


def test_model_check(checkpoint):
    path, model = checkpoint
    result = runner.invoke(app, ["model", "check", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["n_parameters"] == model.num_parameters()
    assert len(info["fingerprint"]) == 64
    human = runner.invoke(app, ["model", "check", str(path)])
    assert human.exit_code == 0 and info["fingerprint"] in human.stdout


def test_model_check_refusals(checkpoint, tmp_path):
    path, model = checkpoint
    bare = shutil.copytree(path, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    assert_one_line_error(runner.invoke(app, ["model", "check", str(bare)]), "--chat-template")
    template = tmp_path / "t.jinja"
    template.write_text(CHAT_TEMPLATE)
    assert runner.invoke(app, ["model", "check", str(bare), "--chat-template", str(template)]).exit_code == 0

    pickled = shutil.copytree(path, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    assert_one_line_error(runner.invoke(app, ["model", "check", str(pickled)]), "--allow-pickle")
    assert runner.invoke(app, ["model", "check", str(pickled), "--allow-pickle"]).exit_code == 0
    assert_one_line_error(runner.invoke(app, ["model", "check", str(tmp_path / "nowhere")]), "does not exist")


def test_real_process_keeps_stdout_json_and_stderr_one_line(checkpoint, tmp_path):
    """The installed entry point, in a fresh process: library warnings must not leak."""
    path, _ = checkpoint
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "prefcurate.flows.cli", "model", "check", str(path), "--json"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["architecture"] == "LlamaForCausalLM"
    bad = subprocess.run([sys.executable, "-m", "prefcurate.flows.cli", "model", "check", str(tmp_path), "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and ok.stderr == "" and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "config.json" in bad.stderr
