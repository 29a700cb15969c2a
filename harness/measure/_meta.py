"""The parameter layout of a model_type memcal's table has no record for, read from the model itself.

transformers builds the model from its config on the meta device (no memory, no weights); every
parameter and buffer it holds becomes a group of `estimator.params.ParamLayout`: each nn.Linear a
`LinearGroup` (quantizable by bitsandbytes unless it is the output head), each nn.Embedding an
`Embedding`, norms and bare parameters `TensorGroup`s, buffers in their own dtype. Tied weights count
once, as ``model.parameters()`` does. The result is exact for the weights; memcal's activation term
then replays the generic decoder program (an approximation, said so in its notes).
"""
from __future__ import annotations

import re

import torch

from estimator.errors import MemcalError
from estimator.params import Embedding, LinearGroup, ParamLayout, TensorGroup
from estimator.spec import ModelSpec
from estimator.workload import Workload

_DTYPES = {torch.float32: "fp32", torch.bool: "bool", torch.int64: "int64", torch.int32: "int32",
           torch.uint8: "uint8"}
_LAYER = re.compile(r"\.(\d+)\.")


def meta_layout(spec: ModelSpec) -> ParamLayout:
    """The exact parameter layout of `spec`'s model as transformers builds it on the meta device."""
    from transformers import AutoModelForCausalLM

    from ._build import _config
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(_config(spec, Workload(dtype="bf16")), dtype=torch.bfloat16)
    except MemcalError:
        raise
    except Exception as exc:  # transformers refuses the config: one line, the reason
        raise MemcalError(f"transformers cannot build model type {spec.family!r} from this config: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    head = model.get_output_embeddings()
    seen: set[int] = set()
    linears, embeddings, tensors, lm_head = [], [], [], None
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        path = _LAYER.sub(".{i}.", f".{name}.").strip(".")
        if isinstance(module, torch.nn.Linear) and any(n == "weight" for n, _ in own):
            group = LinearGroup(name, module.in_features, module.out_features, module.bias is not None, 1,
                                quantizable=module is not head, path=path)
            if module is head:
                lm_head = group
            else:
                linears.append(group)
            continue
        if isinstance(module, torch.nn.Embedding) and own:
            embeddings.append(Embedding(name, module.num_embeddings, module.embedding_dim, path=path))
            continue
        norm = "norm" in type(module).__name__.lower()
        for n, p in own:
            tensors.append(TensorGroup(f"{name}.{n}", "norm" if norm else "param", tuple(p.shape) or (1,), 1,
                                       dtype="compute" if p.dtype == torch.bfloat16 else _DTYPES.get(p.dtype, "fp32")))
        for n, b in module.named_buffers(recurse=False):
            if b is not None:
                tensors.append(TensorGroup(f"{name}.{n}", "buffer", tuple(b.shape) or (1,), 1,
                                           dtype="compute" if b.dtype == torch.bfloat16 else
                                           _DTYPES.get(b.dtype, "fp32")))
    norm_params = sum(t.elements for t in tensors if t.kind == "norm")
    other = sum(t.elements for t in tensors if t.kind == "param")
    return ParamLayout(family=spec.family, linears=tuple(linears), embeddings=tuple(embeddings), lm_head=lm_head,
                       norm_params=norm_params, other_params=other, tensors=tuple(tensors))
