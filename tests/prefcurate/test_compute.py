"""Device and dtype as config (`compute`): what `auto` resolves to, what enters cache keys, a GPU asked
for where there is none, and on CPU what bf16 autocast and fp64 give against fp32 and verify's float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefcurate import compute
from prefcurate.config import ComputeConfig, DataSource, ModelSource, NightlyConfig, load_config
from prefcurate.errors import ConfigError
from prefcurate.scoring.influence import influence_scores, validation_gradient
from prefcurate.scoring.logps import compute_logps, make_collator
from prefcurate.scoring.stage import GRADIENT, SHARD
from prefcurate.stage import read_config
from prefcurate.toyworld.model import build_model
from prefcurate.toyworld.tokenizer import build_tokenizer
from prefcurate.training.stage import WARMUP
from prefcurate.verify import _influence, _pairs
from tests.prefcurate.scoring.test_influence import BETA, full_model
from tests.prefcurate.scoring.test_logps import toy_pairs

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only resolution")


@NO_GPU
def test_auto_is_cpu_fp32_here_and_the_cache_key_sees_the_resolved_values():
    config = NightlyConfig(model=ModelSource(uri="m"), data=DataSource(pool_uri="p"))
    assert compute.resolve(config.compute) == (torch.device("cpu"), "fp32")
    assert read_config(config, SHARD.reads)["compute.device"] == "cpu"
    assert read_config(config, SHARD.reads)["compute.dtype"] == "fp32"
    explicit = config.model_copy(update={"compute": ComputeConfig(device="cpu", dtype="fp32")})
    assert read_config(config, SHARD.reads) == read_config(explicit, SHARD.reads)  # auto here *is* cpu/fp32
    fp64 = config.model_copy(update={"compute": ComputeConfig(dtype="fp64")})
    assert read_config(config, GRADIENT.reads) != read_config(fp64, GRADIENT.reads)
    # training reads the device, not the scoring dtype; the process count changes no result
    assert read_config(config, WARMUP.reads) == read_config(fp64, WARMUP.reads)
    assert "compute.device" in WARMUP.reads and "training.num_processes" not in WARMUP.reads


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_where_there_is_none_is_one_line(device):
    config = NightlyConfig(model=ModelSource(uri="m"), data=DataSource(pool_uri="p"), compute=ComputeConfig(device=device))
    with pytest.raises(ConfigError, match=f"compute.device={device} but CUDA is not available") as err:
        read_config(config, SHARD.reads)
    assert "\n" not in str(err.value)


def test_bad_values_are_config_errors():
    base = {"model": {"uri": "m"}, "data": {"pool_uri": "p"}}
    with pytest.raises(ConfigError, match="compute.device"):
        load_config(NightlyConfig, base=base, overrides=["compute.device=gpu0"])
    with pytest.raises(ConfigError, match="compute.dtype"):
        load_config(NightlyConfig, base=base, overrides=["compute.dtype=fp16"])
    with pytest.raises(ConfigError, match="multiple of num_processes"):
        load_config(NightlyConfig, base=base, overrides=["training.num_processes=3"])


@pytest.fixture(scope="module")
def world():
    tok = build_tokenizer()
    pairs = toy_pairs(40, seed=3)
    ref_logps = compute_logps(build_model(tok, size="small", seed=0), tok, pairs, desc=None)
    return tok, pairs.select(range(10)), pairs.select(range(10, 40)), ref_logps


def _scores(model, tok, val, pool, ref_logps, config):
    model = compute.place(model, config)
    with compute.autocast(config):
        gradient = validation_gradient(model, tok, val, ref_logps, beta=BETA, batch_size=4, desc=None)
        scores = influence_scores(model, tok, pool, ref_logps, gradient, beta=BETA, batch_size=8, desc=None)
        logps = compute_logps(model, tok, pool, desc=None)
    return model, gradient, scores, logps


def test_bf16_autocast_on_cpu_stays_close_to_fp32_with_fp32_accumulators(world):
    tok, val, pool, ref_logps = world
    _, g32, s32, l32 = _scores(full_model(tok), tok, val, pool, ref_logps, ComputeConfig(device="cpu", dtype="fp32"))
    model, g16, s16, l16 = _scores(full_model(tok), tok, val, pool, ref_logps, ComputeConfig(device="cpu", dtype="bf16"))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 weights
    assert all(t.dtype == torch.float32 for t in g16.tensors.values())  # ∇L_val accumulated in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmuls really ran in bf16
        assert model.get_output_embeddings()(torch.ones(1, model.config.hidden_size)).dtype == torch.bfloat16
    # measured: log-probs 0.3 % of their scale, IF 3 % of its largest value, ∇L_val cosine > 0.999
    scale = np.abs(l32["chosen_logps"]).max()
    assert np.abs(l16["chosen_logps"] - l32["chosen_logps"]).max() < 0.02 * scale
    assert not np.array_equal(l16["chosen_logps"], l32["chosen_logps"])  # bf16 did change something
    assert np.abs(s16["if"] - s32["if"]).max() < 0.1 * np.abs(s32["if"]).max()
    flat = lambda g: torch.cat([t.flatten() for t in g.tensors.values()])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(g16), flat(g32), dim=0) > 0.99


def test_fp64_is_the_float64_path_of_verify(world):
    tok, val, pool, ref_logps = world
    model, gradient, scores, _ = _scores(full_model(tok), tok, val, pool, ref_logps, ComputeConfig(device="cpu", dtype="fp64"))
    assert all(p.dtype == torch.float64 for p in model.parameters())
    ref = ref_logps.set_index("pair_id")
    refs = [(ref.loc[list(p["pair_id"])]["chosen_logps"].to_numpy(), ref.loc[list(p["pair_id"])]["rejected_logps"].to_numpy())
            for p in (pool, val)]
    val_grad, influence = _influence(model, _pairs(pool, tok), _pairs(val, tok), refs[0], refs[1], list(range(len(pool))),
                                     make_collator(tok, 512, "keep_start"), BETA, "sigmoid", False, torch.device("cpu"))
    # measured 1.4e-7 (∇L_val) and 9e-8 (IF) of the largest value: Llama's rotary tables are fp32 in both paths
    # (verify's own float64 figure is 1.2e-6)
    scale = max(float(v.abs().max()) for v in val_grad.values())
    assert max(float((gradient.tensors[k] - v).abs().max()) for k, v in val_grad.items()) < 1e-6 * scale
    influence = np.array(influence)
    assert np.abs(scores["if"].to_numpy() - influence).max() < 1e-6 * np.abs(influence).max()
