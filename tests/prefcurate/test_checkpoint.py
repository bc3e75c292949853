"""Checkpoints: validation refuses unsafe or incomplete ones, fingerprints identify bytes,
saves are atomic, and local / hub-cache / s3 sources load the same model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from prefcurate.checkpoint import fingerprint, inspect_checkpoint, load_checkpoint, save_checkpoint
from prefcurate.config import ModelSource
from prefcurate.errors import CheckpointError
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import CHAT_TEMPLATE, build_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny toy checkpoint saved the plain Hugging Face way (no prefcurate.json)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, size="small", seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "sft"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _strip_chat_template(path: Path) -> None:
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def test_load_local_directory(tiny):
    path, model, _ = tiny
    ckpt = load_checkpoint(str(path))
    assert _same_weights(ckpt.model, model)
    assert ckpt.fingerprint == fingerprint(path)
    assert ckpt.architecture == "LlamaForCausalLM"
    assert ckpt.n_parameters == model.num_parameters()
    assert ckpt.model.config._attn_implementation == "eager"  # a plain reload would give sdpa
    assert ckpt.tokenizer.chat_template
    assert load_checkpoint(str(path), attn_implementation="sdpa").model.config._attn_implementation == "sdpa"


def test_inspect_counts_parameters_from_headers(tiny):
    path, model, _ = tiny
    info = inspect_checkpoint(str(path))
    assert info.n_parameters == model.num_parameters()
    assert (info.architecture, info.model_type, info.weight_format) == ("LlamaForCausalLM", "llama", "safetensors")
    assert info.fingerprint == fingerprint(path)
    assert info.chat_template and not info.chat_template_supplied


def test_fingerprint_tracks_weights_and_config_only(tiny, tmp_path):
    path, _, _ = tiny
    copy = _copy(path, tmp_path / "copy")
    assert fingerprint(copy) == fingerprint(path)
    (copy / "prefcurate.json").write_text("{}")
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + " ")
    assert fingerprint(copy) == fingerprint(path), "tokenizer/metadata files are not the model's identity"
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(config))
    assert fingerprint(copy) != fingerprint(path)


def test_save_roundtrip_metadata_and_determinism(tiny, tmp_path):
    _, model, tokenizer = tiny
    fp1 = save_checkpoint(model, tokenizer, str(tmp_path / "a"), metadata={"parent": "abc", "selection_id": "s1"})
    fp2 = save_checkpoint(model, tokenizer, str(tmp_path / "b"))
    assert fp1 == fp2 == fingerprint(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "prefcurate.json").read_text())
    assert meta["fingerprint"] == fp1 and meta["parent"] == "abc" and meta["selection_id"] == "s1"
    loaded = load_checkpoint(str(tmp_path / "a"))
    assert _same_weights(loaded.model, model) and loaded.metadata["parent"] == "abc"
    assert not list((tmp_path / "a").glob("*.bin")), "weights are safetensors only"

    other = build_model(tokenizer, size="small", seed=1)
    assert save_checkpoint(other, tokenizer, str(tmp_path / "b")) != fp1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"], "no temporary directories left behind"


def test_failed_save_leaves_previous_checkpoint(tiny, tmp_path, monkeypatch):
    _, model, tokenizer = tiny
    target = tmp_path / "model"
    before = save_checkpoint(model, tokenizer, str(target))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(build_model(tokenizer, size="small", seed=3), tokenizer, str(target))
    assert fingerprint(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_pickle_only_refused_unless_allowed(tiny, tmp_path):
    path, model, _ = tiny
    pickled = _copy(path, tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_checkpoint(str(pickled))
    with pytest.raises(CheckpointError, match="allow-pickle"):
        inspect_checkpoint(str(pickled))
    ckpt = load_checkpoint(ModelSource(uri=str(pickled), allow_pickle=True))
    assert _same_weights(ckpt.model, model)
    info = inspect_checkpoint(ModelSource(uri=str(pickled), allow_pickle=True))
    assert info.weight_format == "pickle" and info.n_parameters == model.num_parameters()


def test_missing_chat_template_names_the_flag(tiny, tmp_path):
    path, _, _ = tiny
    bare = _copy(path, tmp_path / "bare")
    _strip_chat_template(bare)
    with pytest.raises(CheckpointError, match="--chat-template"):
        load_checkpoint(str(bare))
    template_file = tmp_path / "chat.jinja"
    template_file.write_text(CHAT_TEMPLATE)
    for given in (str(template_file), CHAT_TEMPLATE):
        ckpt = load_checkpoint(ModelSource(uri=str(bare), chat_template=given))
        assert ckpt.tokenizer.chat_template == CHAT_TEMPLATE
    assert inspect_checkpoint(ModelSource(uri=str(bare), chat_template=str(template_file))).chat_template_supplied
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(ModelSource(uri=str(bare), chat_template=str(tmp_path / "nope.jinja")))


def test_chat_template_must_prefix_the_completion(tiny, tmp_path):
    path, _, _ = tiny
    bad = tmp_path / "bad.jinja"
    bad.write_text(
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    with pytest.raises(CheckpointError, match="prefix of prompt \\+ response"):
        inspect_checkpoint(ModelSource(uri=str(path), chat_template=str(bad)))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(CheckpointError, match="roles must alternate"):
        inspect_checkpoint(ModelSource(uri=str(path), chat_template=str(broken)))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda p: (p / "config.json").unlink(), "no config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "no weights"),
        (lambda p: (p / "tokenizer.json").unlink(), "tokenizer"),
        (lambda p: (p / "model.safetensors").write_bytes(b"not a safetensors file"), "safetensors"),
        (
            lambda p: (p / "config.json").write_text(json.dumps({"model_type": "mystery-net"})),
            "trust_remote_code",
        ),
    ],
    ids=["no-config", "no-weights", "no-tokenizer", "corrupt-weights", "unknown-architecture"],
)
def test_broken_checkpoints_refused(tiny, tmp_path, breakage, message):
    path, _, _ = tiny
    broken = _copy(path, tmp_path / "broken")
    breakage(broken)
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(str(broken))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nothing"))


def _fake_hub_cache(cache: Path, repo: str, files_from: Path) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main → snapshots/<commit>/."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files_from, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_hub_id_offline_uses_cache_or_says_so(tiny, tmp_path, monkeypatch):
    from huggingface_hub import constants

    path, model, _ = tiny
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "toy-org/tiny", path)

    ckpt = load_checkpoint("toy-org/tiny")
    assert _same_weights(ckpt.model, model)
    assert ckpt.fingerprint == fingerprint(path)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_checkpoint("toy-org/absent")


def test_s3_roundtrip_and_overwrite(tiny, s3_bucket, tmp_path):
    _, model, tokenizer = tiny
    uri = f"{s3_bucket}/models/sft"
    fp = save_checkpoint(model, tokenizer, uri, metadata={"parent": None})
    ckpt = load_checkpoint(uri, cache_dir=tmp_path / "cache")
    assert ckpt.fingerprint == fp and _same_weights(ckpt.model, model)
    assert ckpt.metadata["fingerprint"] == fp

    other = build_model(tokenizer, size="small", seed=5)
    fp_other = save_checkpoint(other, tokenizer, uri)
    assert fp_other != fp
    info = inspect_checkpoint(uri, cache_dir=tmp_path / "cache")
    assert info.fingerprint == fp_other, "an overwritten prefix must not be served from the stale cache"


def test_s3_missing_prefix(s3_bucket, tmp_path):
    with pytest.raises(Exception) as excinfo:
        inspect_checkpoint(f"{s3_bucket}/nothing-here", cache_dir=tmp_path)
    assert "does not exist" in str(excinfo.value)
    assert excinfo.type.__module__ == "prefcurate.errors"
