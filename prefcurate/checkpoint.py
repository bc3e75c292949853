"""Model checkpoints in and out: resolve a URI, validate before use, load, fingerprint, save.

A checkpoint comes from a local directory, a hub id (`org/name`, through the normal hub
cache so `HF_HUB_OFFLINE` and `revision` behave as usual) or `s3://bucket/prefix`
(downloaded once into a local cache). It is refused before any weights load when it
cannot be used safely: no config, pickle-only weights (unless allowed), no tokenizer, no
chat template. Its fingerprint — a sha256 over the weight files and config.json — names
the model in every later artifact, so "the same model" means the same bytes.

A LoRA stage saves only its adapter (peft's format, a few MB) with the tokenizer and a
prefcurate.json naming the base (its whole ModelSource, as ingest validated it) and the
base's fingerprint. Loading such a directory loads the base, refuses it when its bytes
are not the ones the adapter was trained on, and puts the adapter on it, trainable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prefcurate import io
from prefcurate.config import ModelSource
from prefcurate.errors import CheckpointError, StorageError, first_line

SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
PICKLE = ("pytorch_model*.bin", "pytorch_model*.bin.index.json", "*.pt", "*.pth", "*.ckpt")
# Files that define the model besides its weights; adapter_config.json makes LoRA dirs distinct.
ADAPTER_CONFIG = "adapter_config.json"
CONFIG_FILES = ("config.json", ADAPTER_CONFIG)
METADATA_FILE = "prefcurate.json"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHAT_TEMPLATE_HINT = "pass a Jinja chat template with --chat-template FILE (ModelSource.chat_template)"


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint and the facts later stages log about it."""

    model: Any
    tokenizer: Any
    fingerprint: str
    local_dir: Path
    architecture: str
    n_parameters: int
    metadata: dict = field(default_factory=dict)
    base: ModelSource | None = None  # the base model of an adapter checkpoint
    base_fingerprint: str | None = None


class CheckpointInfo(BaseModel):
    """What `model check` reports: enough to decide whether a checkpoint is usable."""

    uri: str
    local_dir: str
    fingerprint: str
    architecture: str
    model_type: str
    n_parameters: int
    weight_format: str
    chat_template: bool
    chat_template_supplied: bool
    metadata: dict
    base_fingerprint: str | None = None


def _source(source: ModelSource | str) -> ModelSource:
    return source if isinstance(source, ModelSource) else ModelSource(uri=str(source))


def default_cache_dir() -> Path:
    return Path(os.environ.get("PREFCURATE_CACHE", ".prefcurate-cache")) / "checkpoints"


def _files(local_dir: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in local_dir.glob(pattern) if p.is_file()})


def _resolve(source: ModelSource, cache_dir: str | os.PathLike | None) -> Path:
    """A local directory holding the checkpoint's files."""
    uri = source.uri
    if io.is_remote(uri):
        with io.local_copy_dir(uri, cache_dir or default_cache_dir()) as local:
            return Path(local)
    local = Path(uri.removeprefix("file://")).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise CheckpointError(f"{uri} is a file; a checkpoint is a directory with config.json and weights")
    if HUB_ID.match(uri) and not uri.startswith((".", "/", "~")):
        return _hub_snapshot(source)
    raise CheckpointError(f"{uri} does not exist; give a checkpoint directory, a hub id (org/name) or s3://bucket/prefix")


def _hub_snapshot(source: ModelSource) -> Path:
    """Fetch (or find in the hub cache) the files of a hub model; pickle files only when allowed."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", *SAFETENSORS]
    if source.allow_pickle:
        patterns += list(PICKLE)
    if source.trust_remote_code:
        patterns.append("*.py")
    try:
        return Path(snapshot_download(source.uri, revision=source.revision, allow_patterns=patterns))
    except Exception as exc:  # offline and uncached, unknown repo, gated, network down
        from huggingface_hub import constants

        where = f"{source.uri}" + (f"@{source.revision}" if source.revision else "")
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"no local directory {source.uri}, and hub model {where} is not in the local cache while "
                "HF_HUB_OFFLINE is set; download it first (hf download) or give a local directory"
            ) from exc
        raise CheckpointError(
            f"no local directory {source.uri}, and hub model {where} cannot be fetched: {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def _weight_files(local_dir: Path, allow_pickle: bool) -> tuple[str, list[Path]]:
    """('safetensors' | 'pickle', files); refuses pickle-only checkpoints unless allowed."""
    safe = _files(local_dir, SAFETENSORS)
    if any(p.name.endswith(".safetensors") for p in safe):
        return "safetensors", safe
    pickled = _files(local_dir, PICKLE)
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled[:3])
        raise CheckpointError(
            f"{local_dir} has only pickle weights ({names}), which can run code when loaded; "
            "convert them to safetensors or pass --allow-pickle (ModelSource.allow_pickle) if you trust the source"
        )
    if pickled:
        return "pickle", pickled
    raise CheckpointError(f"{local_dir} has no weights (*.safetensors); save the model with save_pretrained")


def fingerprint(local_dir: str | os.PathLike) -> str:
    """sha256 over the weight files and config files (sorted names, contents streamed)."""
    local_dir = Path(local_dir)
    weights = _files(local_dir, SAFETENSORS) or _files(local_dir, PICKLE)
    files = sorted(weights + [local_dir / n for n in CONFIG_FILES if (local_dir / n).is_file()], key=lambda p: p.name)
    if not weights:
        raise CheckpointError(f"{local_dir} has no weight files to fingerprint")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _load_config(local_dir: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    if not (local_dir / "config.json").is_file():
        raise CheckpointError(f"{local_dir} has no config.json; it is not a Hugging Face model directory")
    try:
        return AutoConfig.from_pretrained(str(local_dir), trust_remote_code=trust_remote_code)
    except Exception as exc:
        hint = "" if trust_remote_code else " (a custom architecture needs trust_remote_code, off by default)"
        raise CheckpointError(f"cannot load config.json in {local_dir}: {first_line(exc)}{hint}") from exc


def _chat_template_text(value: str) -> str:
    """The template itself: `value` is inline Jinja or a path to a file holding it."""
    if "{" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        if not path.is_file():
            raise CheckpointError(f"chat template file {value} does not exist; give a .jinja file or the template text")
        return path.read_text()
    return value


def _load_tokenizer(local_dir: Path, source: ModelSource, *, chat: bool = True) -> tuple[Any, bool]:
    """The tokenizer with a chat template (its own, or the one supplied); whether one was supplied.

    `chat=False` (a reward model) takes the tokenizer as it is: a template is used when present.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local_dir), trust_remote_code=source.trust_remote_code)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load a tokenizer from {local_dir}: {first_line(exc)}; save it next to the model (tokenizer.save_pretrained)"
        ) from exc
    supplied = bool(source.chat_template)
    if not chat and not supplied:
        return tokenizer, False
    if supplied:
        tokenizer.chat_template = _chat_template_text(source.chat_template)
    elif not getattr(tokenizer, "chat_template", None):
        raise CheckpointError(f"the tokenizer in {local_dir} has no chat template; {CHAT_TEMPLATE_HINT}")
    _check_chat_template(tokenizer, local_dir)
    return tokenizer, supplied


def _check_chat_template(tokenizer: Any, local_dir: Path) -> None:
    """DPO tokenises prompt and prompt + response separately: the first must prefix the second."""
    exchange = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}]
    try:
        prompt = tokenizer.apply_chat_template(exchange[:1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(exchange, tokenize=False)
    except Exception as exc:
        raise CheckpointError(
            f"the chat template of {local_dir} cannot render a user/assistant exchange ({first_line(exc)}); {CHAT_TEMPLATE_HINT}"
        ) from exc
    if not full.startswith(prompt):
        raise CheckpointError(
            f"the chat template of {local_dir} does not render the prompt with its generation prompt as a prefix of "
            f"prompt + response, which DPO needs; {CHAT_TEMPLATE_HINT}"
        )


def _safetensors_parameters(files: list[Path]) -> int:
    """Count parameters from safetensors headers, without reading the tensors."""
    from safetensors import safe_open

    total = 0
    for path in files:
        if not path.name.endswith(".safetensors"):
            continue
        try:
            with safe_open(str(path), framework="np") as fh:
                total += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {first_line(exc)}") from exc
    return total


def _config_parameters(config: Any, trust_remote_code: bool) -> int:
    """Count parameters of the architecture on the meta device (pickle weights are never opened)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return model.num_parameters()


def _architecture(config: Any) -> str:
    return (getattr(config, "architectures", None) or [config.model_type])[0]


def _metadata(local_dir: Path) -> dict:
    path = local_dir / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}; delete it or re-save the checkpoint") from exc


def is_adapter(local_dir: Path) -> bool:
    """Whether `local_dir` holds a peft adapter rather than a whole model."""
    return (local_dir / ADAPTER_CONFIG).is_file()


def _adapter_base(local_dir: Path, load: Any) -> tuple[ModelSource, Any]:
    """The base model an adapter was trained on, as `load(base_source)` gives it (a Checkpoint or
    CheckpointInfo), refused when missing or not the same bytes the adapter was trained on."""
    meta = _metadata(local_dir)
    if not meta.get("base") or not meta.get("base_fingerprint"):
        raise CheckpointError(
            f"{local_dir} is a LoRA adapter without a base model in its {METADATA_FILE}; "
            "save it with prefcurate (save_checkpoint with base=) or merge it into a full checkpoint"
        )
    source = ModelSource.model_validate(meta["base"])
    try:
        base = load(source)
    except CheckpointError as exc:
        raise CheckpointError(f"the base model of adapter {local_dir} cannot be used: {first_line(exc)}") from exc
    if base.fingerprint != meta["base_fingerprint"]:
        raise CheckpointError(
            f"the base model {source.uri} of adapter {local_dir} has changed (fingerprint {base.fingerprint[:12]}…, "
            f"the adapter was trained on {meta['base_fingerprint'][:12]}…); restore that base or retrain the adapter"
        )
    return source, base


def load_tokenizer(source: ModelSource | str, cache_dir: str | os.PathLike | None = None) -> Any:
    """The checkpoint's validated tokenizer with its chat template, without loading any weights."""
    source = _source(source)
    return _load_tokenizer(_resolve(source, cache_dir), source)[0]


def inspect_checkpoint(source: ModelSource | str, cache_dir: str | os.PathLike | None = None) -> CheckpointInfo:
    """Validate a checkpoint and describe it without loading its weights."""
    source = _source(source)
    local_dir = _resolve(source, cache_dir)
    if is_adapter(local_dir):
        _, base = _adapter_base(local_dir, lambda b: inspect_checkpoint(b, cache_dir))
        _, files = _weight_files(local_dir, False)
        tokenizer, supplied = _load_tokenizer(local_dir, source)
        return base.model_copy(update={
            "uri": source.uri, "local_dir": str(local_dir), "fingerprint": fingerprint(local_dir),
            "n_parameters": base.n_parameters + _safetensors_parameters(files), "weight_format": "safetensors (LoRA adapter)",
            "chat_template": bool(tokenizer.chat_template), "chat_template_supplied": supplied,
            "metadata": _metadata(local_dir), "base_fingerprint": base.fingerprint,
        })  # fmt: skip
    config = _load_config(local_dir, source.trust_remote_code)
    weight_format, files = _weight_files(local_dir, source.allow_pickle)
    tokenizer, supplied = _load_tokenizer(local_dir, source)
    if weight_format == "safetensors":
        n_parameters = _safetensors_parameters(files)
    else:
        n_parameters = _config_parameters(config, source.trust_remote_code)
    return CheckpointInfo(
        uri=source.uri,
        local_dir=str(local_dir),
        fingerprint=fingerprint(local_dir),
        architecture=_architecture(config),
        model_type=config.model_type,
        n_parameters=n_parameters,
        weight_format=weight_format,
        chat_template=bool(tokenizer.chat_template),
        chat_template_supplied=supplied,
        metadata=_metadata(local_dir),
    )


def load_checkpoint(
    source: ModelSource | str,
    *,
    cache_dir: str | os.PathLike | None = None,
    attn_implementation: str | None = "eager",
) -> Checkpoint:
    """Validate, then load model and tokenizer. Eager attention by default: torch.func needs it.

    An adapter directory loads its base (checked against the recorded fingerprint) with the
    adapter on top as a PeftModel whose adapter weights are trainable and base weights frozen.
    """
    from transformers import AutoModelForCausalLM

    source = _source(source)
    local_dir = _resolve(source, cache_dir)
    if is_adapter(local_dir):
        return _load_adapter(local_dir, source, cache_dir, attn_implementation)
    config = _load_config(local_dir, source.trust_remote_code)
    weight_format, _ = _weight_files(local_dir, source.allow_pickle)
    tokenizer, _ = _load_tokenizer(local_dir, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local_dir),
            use_safetensors=weight_format == "safetensors",
            attn_implementation=attn_implementation,
            trust_remote_code=source.trust_remote_code,
        )
    except Exception as exc:
        raise CheckpointError(f"cannot load the model in {local_dir}: {first_line(exc)}") from exc
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint(local_dir),
        local_dir=local_dir,
        architecture=_architecture(config),
        n_parameters=model.num_parameters(),
        metadata=_metadata(local_dir),
    )


def _load_adapter(local_dir: Path, source: ModelSource, cache_dir: str | os.PathLike | None,
                  attn_implementation: str | None) -> Checkpoint:
    from peft import PeftModel

    base_source, base = _adapter_base(
        local_dir, lambda b: load_checkpoint(b, cache_dir=cache_dir, attn_implementation=attn_implementation)
    )
    tokenizer, _ = _load_tokenizer(local_dir, source)
    try:
        model = PeftModel.from_pretrained(base.model, str(local_dir), is_trainable=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load the LoRA adapter in {local_dir} onto {base_source.uri}: {first_line(exc)}") from exc
    return Checkpoint(
        model=model, tokenizer=tokenizer, fingerprint=fingerprint(local_dir), local_dir=local_dir,
        architecture=base.architecture, n_parameters=model.num_parameters(), metadata=_metadata(local_dir),
        base=base_source, base_fingerprint=base.fingerprint,
    )  # fmt: skip


def source_fingerprint(source: ModelSource | str, cache_dir: str | os.PathLike | None = None) -> str:
    """The fingerprint of a checkpoint's files, resolved as a load would, without loading its weights."""
    return fingerprint(_resolve(_source(source), cache_dir))


def load_reward_model(source: ModelSource | str, *, cache_dir: str | os.PathLike | None = None) -> Checkpoint:
    """A sequence-classification model, resolved and validated like any checkpoint (safetensors unless allowed)."""
    from transformers import AutoModelForSequenceClassification

    source = _source(source)
    local_dir = _resolve(source, cache_dir)
    config = _load_config(local_dir, source.trust_remote_code)
    weight_format, _ = _weight_files(local_dir, source.allow_pickle)
    tokenizer, _ = _load_tokenizer(local_dir, source, chat=False)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(local_dir), use_safetensors=weight_format == "safetensors", trust_remote_code=source.trust_remote_code
        )
    except Exception as exc:
        raise CheckpointError(f"cannot load reward model {source.uri}: {first_line(exc)}") from exc
    return Checkpoint(
        model=model, tokenizer=tokenizer, fingerprint=fingerprint(local_dir), local_dir=local_dir,
        architecture=_architecture(config), n_parameters=model.num_parameters(), metadata=_metadata(local_dir),
    )


def save_checkpoint(model: Any, tokenizer: Any, uri: str, metadata: dict | None = None, *,
                    base: ModelSource | None = None, base_fingerprint: str | None = None) -> str:
    """Save model (safetensors) + tokenizer + prefcurate.json atomically; returns the fingerprint.

    A PeftModel saves its adapter only, and needs `base` and `base_fingerprint`: the model it
    sits on, recorded in prefcurate.json so `load_checkpoint` can rebuild and check it.

    Locally the files go to a temporary sibling directory that is renamed into place; on an
    object store the files are uploaded first and prefcurate.json last, so a reader that
    finds prefcurate.json finds a whole checkpoint.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError(f"refusing to save {uri} with a tokenizer that has no chat template; set tokenizer.chat_template")
    from peft import PeftModel

    extra: dict[str, Any] = {}
    if isinstance(model, PeftModel):
        if base is None or not base_fingerprint:
            raise CheckpointError(f"refusing to save the LoRA adapter {uri} without its base model and base fingerprint")
        extra = {"base": base.model_dump(mode="json"), "base_fingerprint": base_fingerprint}
    remote = io.is_remote(uri)
    if remote:
        staging = Path(tempfile.mkdtemp(prefix="prefcurate-ckpt-"))
    else:
        target = Path(str(uri).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        digest = fingerprint(staging)
        meta = {**(metadata or {}), **extra, "fingerprint": digest, "architecture": _architecture(model.config)}
        if remote:
            _upload(staging, uri, meta)
        else:
            (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            _swap_into_place(staging, target)
    except (StorageError, CheckpointError):
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot save checkpoint to {uri}: {first_line(exc)}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return digest


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`, replacing an older checkpoint only once the new one is whole."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _upload(staging: Path, uri: str, meta: dict) -> None:
    fs, path = io.filesystem(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception as exc:
        raise StorageError(f"cannot replace {uri}: {first_line(exc)}") from exc
    io.upload_dir(staging, uri)
    io.write_json(io.join(uri, METADATA_FILE), meta)
