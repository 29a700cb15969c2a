"""Building checkpoints the way people ship them (issue 15): a config's own quantization_config.

`checkpoint_method(spec, workload)` says which quantization a build applies (None: dense or --weights
int8/nf4/fp4, which build.py handles); `unsupported(…)` why the harness cannot build it here;
`bnb_config` the BitsAndBytesConfig a bitsandbytes config.json describes; `compressed_checkpoint`
writes random weights as a compressed-tensors checkpoint (what llm-compressor saves), which
from_pretrained then loads as it would a real one.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from estimator import quant

# methods whose quantized layers a library builds on the CPU here, and the package that does it
CPU_BUILDERS = {"bitsandbytes": "bitsandbytes", "compressed-tensors": "compressed_tensors"}


def checkpoint_method(spec, workload) -> str | None:
    """The method of the config's quantization_config that a build must apply, or None."""
    scheme = quant.scheme_for(spec, workload)
    if scheme.origin != "quantization_config" or scheme.method == "dense":
        return None
    return scheme.method


def unsupported(spec, workload, device: str) -> str | None:
    """One line: why this checkpoint's quantization cannot be built here, or None."""
    if workload.weights in quant.scheme.METHOD_FLAGS:
        return (f"--weights {workload.weights} is estimate-only: "
                "the harness builds quantized models from a config's quantization_config")
    method = checkpoint_method(spec, workload)
    if method is None:
        return None
    package = CPU_BUILDERS.get(method)
    if package is None:
        return (f"the checkpoint's {method} quantization is estimate-only here (no CPU build of its layers); "
                "--weights dense measures the dense model")
    if importlib.util.find_spec(package) is None:
        return (f"the checkpoint's {method} quantization needs the {package} package: "
                f"pip install {package.replace('_', '-')}")
    if device in ("dry-run", "mps"):
        return f"{method} checkpoints are built on cpu or cuda: the {device} device cannot quantize"
    return None


def bnb_config(spec):
    """transformers' BitsAndBytesConfig from the config.json's quantization_config."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig.from_dict(dict(spec.config["quantization_config"]))


def compressed_checkpoint(model, qc: dict, folder: Path) -> None:
    """Save `model` (random weights, dense) as the compressed-tensors checkpoint `qc` describes."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    fields = {k: v for k, v in qc.items() if k not in ("quant_method", "version", "format")}
    config = QuantizationConfig.model_validate({**fields, "quantization_status": "frozen"})
    apply_quantization_config(model, config)
    with torch.no_grad():  # calibrated scales would come from data: any positive value gives the same layout
        for module in model.modules():
            for name in ("weight_scale", "input_scale"):
                if isinstance(getattr(module, name, None), torch.Tensor):
                    getattr(module, name).fill_(0.01)
    compressor = ModelCompressor(quantization_config=config)  # formats inferred per module, as the load does
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(str(folder))
    saved = json.loads((folder / "config.json").read_text())
    saved["quantization_config"]["format"] = qc.get("format", saved["quantization_config"].get("format"))
    (folder / "config.json").write_text(json.dumps(saved))
