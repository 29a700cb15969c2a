"""Model building: random weights of the exact architecture, real weights, quantized weights, fake.

`build_model(spec, workload, device)` returns a `BuiltModel` that `measure.run_point` runs any
number of workloads on, as long as they share what building fixed (dtype, weights, attention):
a sweep builds once per group.

* random weights: `from_config` under `torch.device(target)` with `dtype=`: created on the target
  device in the target dtype, no full-size fp32 copy on the host first;
* dry run: the same, under FakeTensorMode: no memory allocated, the storages still carry sizes;
* real weights: a local folder with *.safetensors (never pickles); trust_remote_code only if asked;
* bitsandbytes (int8, nf4, fp4): through transformers' BitsAndBytesConfig. from_config cannot
  quantize, so random weights are written once in the compute dtype to a temporary safetensors
  folder and loaded back through from_pretrained, the path real checkpoints take.
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from estimator.errors import MemcalError
from estimator.expr import evaluate
from estimator.spec import ModelSpec
from estimator.workload import Workload

from . import _experts as experts
from . import _quant_build as quant_build
from ._tracker import storages_bytes

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTN_IMPL = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}
# Keys of a config.json that describe a checkpoint, not an architecture: random weights ignore them.
_BNB_PARAM_STATE = ("SCB", "CB")
_BNB_WEIGHTS = ("int8", "nf4", "fp4")
_CHECKPOINT_KEYS = ("quantization_config", "_name_or_path", "transformers_version", "architectures",
                    "torch_dtype", "dtype", "auto_map")

__all__ = ["BuiltModel", "build_model", "unsupported_reason", "weight_tensors", "TORCH_DTYPES"]


@dataclass
class BuiltModel:
    """A model ready to run, and what building it fixed. `fake_mode` is set for a dry run."""

    model: Any
    spec: ModelSpec
    device: str                 # cpu, dry-run, cuda, mps
    torch_device: str           # where the tensors live (dry run: fake tensors on cpu)
    dtype: str
    weights: str
    double_quant: bool
    attention: str
    fake_mode: Any = None
    weight_bytes: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    placement: Any = None       # a harness.measure._devices.Placement: the model split over GPUs (issue 18)

    def key(self) -> tuple:
        return (self.spec.name, self.device, self.dtype, self.weights, self.double_quant, self.attention)

    def fits(self, workload: Workload) -> bool:
        """Can this built model run `workload` (same dtype, weights and attention)?"""
        return (workload.dtype, workload.weights, workload.double_quant, workload.attention) == \
            (self.dtype, self.weights, self.double_quant, self.attention)

    def tensors(self) -> list[torch.Tensor]:
        return weight_tensors(self.model)


def weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and the quantization state that get_memory_footprint misses.

    bitsandbytes keeps scales outside parameters: Int8Params.SCB (fp32 per row), Params4bit.quant_state
    (absmax, the quant map `code`, `offset`, and a nested state2 for double quantization).
    """
    out: list[torch.Tensor] = list(model.parameters()) + list(model.buffers())
    extra: list[torch.Tensor] = []
    for p in out:
        if not type(p).__module__.startswith("bitsandbytes"):
            continue  # (a FakeTensor carries tensors of its own in vars(): not weights)
        extra.extend(v for k, v in vars(p).items() if k in _BNB_PARAM_STATE and isinstance(v, torch.Tensor))
        state = getattr(p, "quant_state", None)
        while state is not None:
            extra.extend(v for v in vars(state).values() if isinstance(v, torch.Tensor))
            state = getattr(state, "state2", None)
    for module in model.modules():
        state = getattr(module, "state", None)  # Linear8bitLt's MatmulLtState (CB, SCB once used)
        if type(module).__module__.startswith("bitsandbytes") and state is not None and hasattr(state, "__dict__"):
            extra.extend(v for v in vars(state).values() if isinstance(v, torch.Tensor))
    return out + extra


def unsupported_reason(spec: ModelSpec, workload: Workload, device: str, gpu: Any = None) -> str | None:
    """One line saying why the harness cannot run this point, or None. Estimate-only settings end here.
    ``gpu``: the dry run's CUDA target (a GpuProfile, a name or None), which lets a dry run take flash."""
    if workload.is_gguf:
        return f"GGUF {workload.weights} weights are estimate-only: the harness runs transformers models"
    reason = positions_reason(spec, workload)
    if reason:
        return reason
    reason = quant_build.unsupported(spec, workload, device)  # a config's own quantization_config (issue 15)
    if reason:
        return reason
    if workload.kv_dtype != workload.dtype:
        return (f"a {workload.kv_dtype} KV cache with {workload.dtype} compute is estimate-only: "
                "transformers' Dynamic/StaticCache store keys and values in the compute dtype")
    if workload.weights in _BNB_WEIGHTS:
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed: pip install bitsandbytes"
        if device == "dry-run":
            return "a dry run cannot quantize: bitsandbytes quantizes with real kernels (measure on cpu or cuda)"
        if device == "mps":
            return "bitsandbytes has no MPS backend"
    if workload.attention == "flash" and device == "dry-run" and gpu:
        reason = flash_dry_run_reason(spec, workload, gpu)
        if reason:
            return reason
    elif workload.attention == "flash":
        hint = "; a dry run emulates it with --gpu" if device == "dry-run" else ""
        if importlib.util.find_spec("flash_attn") is None:
            return "flash attention needs the flash_attn package (not installed here)" + hint
        if device != "cuda":
            return "flash attention runs on CUDA only" + hint
    return _record_refusal(spec, workload)


def flash_dry_run_reason(spec: ModelSpec, workload: Workload, gpu: Any) -> str | None:
    """Why the CUDA-target dry run cannot emulate transformers' flash_attention_2 here, or None
    (harness/measure/_cuda_target.py: the trace runs SDPA, flash's buffers replace the SDPA call's)."""
    from estimator.cuda import SdpaCall, flash_attn2, gpu_from_dict, load_gpu
    profile = gpu if hasattr(gpu, "compute_capability") else gpu_from_dict(gpu) if isinstance(gpu, dict) \
        else load_gpu(gpu)
    if workload.dtype not in ("fp16", "bf16"):
        return f"flash attention on the CUDA target: FlashAttention only supports fp16 and bf16, not {workload.dtype}"
    call = SdpaCall(batch=1, heads=spec.num_heads, q_len=1, kv_len=1, head_dim=spec.head_dim, dtype=workload.dtype,
                    kv_heads=spec.num_kv_heads)
    reason = flash_attn2.refusal(call, profile.compute_capability)
    if reason:
        return f"flash attention on {profile.name}: {reason}"
    qk, v = spec.scope.get("qk_head_dim"), spec.scope.get("v_head_dim")
    if qk and v and qk != v:
        return "flash attention on the dry run: q/k and v head dims differ (transformers pads v): not emulated"
    if spec.sliding_layers:
        return "flash attention on the dry run: the sliding-window path (flash's window, no SDPA mask) is not emulated"
    if workload.cache == "static":
        return ("flash attention on the dry run: a static cache takes flash's unpadding path with keys longer than the "
                "mask (sliced, the query unpadded by unpad_input), which is not emulated")
    return None


def positions_reason(spec: ModelSpec, workload: Workload) -> str | None:
    """Why a workload is longer than the model's positions (`ModelSpec.positions_reason`: a learned table,
    or max_position_embeddings), or None: a dry run must not say ok where the model is not meant to run."""
    return spec.positions_reason(workload.total_len, workload.prompt_len)


def positions_note(spec: ModelSpec, workload: Workload) -> str | None:
    """A note for a dynamic-RoPE model run past its max_position_embeddings (allowed: it rescales)."""
    limit = spec.max_position_embeddings
    if limit and workload.total_len > limit and not positions_reason(spec, workload):
        return (f"{workload.total_len} positions pass {spec.name}'s max_position_embeddings ({limit}): "
                "dynamic RoPE rescales its frequencies past it")
    return None


def _record_refusal(spec: ModelSpec, workload: Workload) -> str | None:
    """The reason the family's record gives for a workload transformers cannot run (`unsupported`)."""
    scope = {**spec.scope, "phase": workload.phase, "cache": workload.cache, "attention": workload.attention}
    for condition, reason in (spec.record.unsupported if spec.record else ()):
        if evaluate(condition, scope):
            return reason
    return None


def _config(spec: ModelSpec, workload: Workload, dry_run: bool = False):
    from transformers import AutoConfig
    raw = {k: v for k, v in dict(spec.config).items() if k not in _CHECKPOINT_KEYS}
    model_type = raw.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except (ValueError, KeyError) as exc:
        raise MemcalError(f"transformers cannot build a {model_type!r} model: {exc}".splitlines()[0]) from None
    config._attn_implementation = ATTN_IMPL[workload.attention]
    if workload.attention == "flash" and dry_run:  # the dry run's CUDA target: SDPA traced, flash's buffers substituted
        config._attn_implementation = "sdpa"
    return config


def _bnb_config(workload: Workload):
    from transformers import BitsAndBytesConfig
    if workload.weights == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=workload.weights,
                              bnb_4bit_compute_dtype=TORCH_DTYPES[workload.dtype],
                              bnb_4bit_use_double_quant=workload.double_quant)


def _check_folder(path: Path) -> None:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise MemcalError(f"{path}: real weights need a local model folder with a config.json")
    if not any(path.glob("*.safetensors")):
        raise MemcalError(f"{path}: no *.safetensors files (memcal never loads pickled .bin weights)")


def _from_pretrained(path: Path, workload: Workload, torch_device: str, trust_remote_code: bool, spec=None):
    from transformers import AutoModelForCausalLM
    kwargs: dict[str, Any] = dict(dtype=TORCH_DTYPES[workload.dtype], device_map=torch_device,
                                  attn_implementation=ATTN_IMPL[workload.attention],
                                  use_safetensors=True, trust_remote_code=trust_remote_code)
    if workload.weights in _BNB_WEIGHTS:
        kwargs["quantization_config"] = _bnb_config(workload)
    elif spec is not None and quant_build.checkpoint_method(spec, workload) == "bitsandbytes":
        kwargs["quantization_config"] = quant_build.bnb_config(spec)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _random(config, workload: Workload, torch_device: str, fake_mode=None):
    from transformers import AutoModelForCausalLM
    context = fake_mode if fake_mode is not None else contextlib.nullcontext()
    with context, torch.device(torch_device):
        return AutoModelForCausalLM.from_config(config, dtype=TORCH_DTYPES[workload.dtype],
                                                attn_implementation=config._attn_implementation)


def build_model(spec: ModelSpec, workload: Workload, device: str = "cpu", *, weights_path: str | Path | None = None,
                trust_remote_code: bool = False, seed: int = 0, placement: Any = None, gpu: Any = None) -> BuiltModel:
    """Build the model a workload runs on (see the module docstring). Raises MemcalError on bad input.

    ``placement`` (a `Placement`) splits the model over GPUs: on the dry run the devices are virtual
    (harness/measure/_devices.py); on CUDA the random weights are made on the host and dispatched by
    accelerate's ``dispatch_model``, as ``from_pretrained(device_map=...)`` does. ``gpu``: the dry run's
    CUDA target; with it a dry run builds attention "flash" as SDPA (the target substitutes flash's buffers)."""
    reason = unsupported_reason(spec, workload, device, gpu)
    if reason:
        raise MemcalError(reason)
    if placement is not None and device not in ("dry-run", "cuda"):
        raise MemcalError(f"a device map splits a model over GPUs: measure it on the dry run or cuda, not {device}")
    if placement is not None and device == "cuda":
        return _dispatched(spec, workload, placement, weights_path, trust_remote_code, seed)
    torch_device = "cpu" if device == "dry-run" else device
    notes: list[str] = []
    if spec.is_moe:
        experts.install()  # the CPU experts path of a real run, in a dry run too (harness/measure/_experts.py)
    fake_mode = None
    torch.manual_seed(seed)
    if device == "dry-run":
        if weights_path is not None:
            notes.append("dry run: the weights folder gives the config only; weights are fake")
        from ._fakemode import DryRunMode
        fake_mode = DryRunMode()
        if getattr(fake_mode, "note", ""):  # the stock mode (benchmarks, tests) has none
            notes.append(fake_mode.note)
        if workload.attention == "flash":
            notes.append("dry run: flash_attention_2 traced as SDPA on the CPU; the CUDA target replaces each SDPA "
                         "call's buffers with flash_attn's (estimator/cuda/flash_attn2.py)")
        model = _random(_config(spec, workload, dry_run=True), workload, torch_device, fake_mode)
    elif weights_path is not None:
        _check_folder(Path(weights_path))
        model = _from_pretrained(Path(weights_path), workload, torch_device, trust_remote_code)
    elif workload.weights in _BNB_WEIGHTS or quant_build.checkpoint_method(spec, workload):
        method = quant_build.checkpoint_method(spec, workload)
        folder = Path(tempfile.mkdtemp(prefix="memcal-random-"))
        try:  # random weights in the compute dtype, quantized on load like a real checkpoint
            dense = _random(_config(spec, workload), workload, "cpu")
            if method == "compressed-tensors":  # written compressed, as llm-compressor saves one
                quant_build.compressed_checkpoint(dense, dict(spec.config["quantization_config"]), folder)
            else:
                dense.save_pretrained(folder, safe_serialization=True)
            model = _from_pretrained(folder, workload, torch_device, False, spec)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        notes.append(f"random weights quantized to {method or workload.weights} on load "
                     f"({'the checkpoint' + chr(39) + 's quantization_config' if method else 'bitsandbytes'})")
    else:
        model = _random(_config(spec, workload), workload, torch_device)
    model.eval()
    if quant_build.checkpoint_method(spec, workload) == "compressed-tensors" and device != "dry-run":
        _one_token(model)  # compressed-tensors decompresses every module on the first forward: the steady state
        notes.append("compressed-tensors decompressed the weights on a warm-up forward; weights measured after it")
    if _warm_bnb_cpu(model, workload, torch_device, spec):
        notes.append("bitsandbytes repacked the 4-bit weights for its CPU kernel on a warm-up forward "
                     "(absmax in bf16, double quantization undone); weights are measured after it")
    if spec.is_moe:
        notes.append(f"MoE experts implementation: {_experts_impl(model)}; on CPU, operands whose strides torch's "
                     "grouped_mm kernel rejects (not multiples of 16 bytes) take transformers' fallback")
    if placement is not None:
        notes.append(f"split over {placement.gpus} virtual GPUs by accelerate's {placement.strategy} device map; "
                     "allocations attributed to the device of their inputs or module, with accelerate's copies")
    return BuiltModel(model=model, spec=spec, device=device, torch_device=torch_device, dtype=workload.dtype,
                      weights=workload.weights, double_quant=workload.double_quant, attention=workload.attention,
                      fake_mode=fake_mode, weight_bytes=storages_bytes(weight_tensors(model)), notes=tuple(notes),
                      placement=placement)


def _dispatched(spec: ModelSpec, workload: Workload, placement: Any, weights_path, trust_remote_code: bool,
                seed: int) -> BuiltModel:
    """Random (or real) weights split over the visible CUDA devices as the placement says."""
    from accelerate import dispatch_model
    torch.manual_seed(seed)
    device_map = {k: int(v) for k, v in placement.device_map.items()}
    if weights_path is not None:
        _check_folder(Path(weights_path))
        model = _from_pretrained(Path(weights_path), workload, device_map, trust_remote_code)  # type: ignore[arg-type]
    else:
        model = _random(_config(spec, workload), workload, "cpu")
        model = dispatch_model(model, device_map=device_map, skip_keys=list(placement.skip_keys))
    model.eval()
    return BuiltModel(model=model, spec=spec, device="cuda", torch_device=f"cuda:{placement.first_device}",
                      dtype=workload.dtype, weights=workload.weights, double_quant=workload.double_quant,
                      attention=workload.attention, weight_bytes=storages_bytes(weight_tensors(model)),
                      notes=(f"split over {placement.gpus} GPUs by accelerate's dispatch_model",), placement=placement)


def _one_token(model) -> None:
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long), attention_mask=None, use_cache=False)


def _warm_bnb_cpu(model, workload: Workload, torch_device: str, spec: ModelSpec | None = None) -> bool:
    """bitsandbytes repacks 4-bit weights for its fused CPU kernel (AVX512-BF16) on their first
    forward, with a one-off transient of a few times the largest layer. The protocol measures the
    steady state, as it warms cuBLAS on CUDA: one 1-token forward before anything is measured."""
    four_bit = workload.weights in ("nf4", "fp4") or (spec is not None and quant_build.checkpoint_method(
        spec, workload) == "bitsandbytes" and spec.config["quantization_config"].get("load_in_4bit"))
    if torch_device != "cpu" or not four_bit:
        return False
    if not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()):
        return False
    _one_token(model)
    return True


def _experts_impl(model) -> str:
    try:
        impls = model.get_experts_implementation()
        return ", ".join(sorted({str(v) for v in impls.values()})) if isinstance(impls, dict) else str(impls)
    except Exception:  # older transformers, or no experts interface
        return "unknown"
