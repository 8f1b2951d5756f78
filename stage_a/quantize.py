"""INT8 post-training quantization of a SAFE model with torchao, for inference: the base LM, the bridge, or both.

Targets (`quantize(model, target, scheme)`):
- "base": every `nn.Linear` of the base's language model (the module holding its decoder layers, found as in
  stage_a.fusion.decoder_layers_path: attention and MLP projections, inside peft's LoRA wrappers too, where the
  frozen projection is the wrapper's `base_layer`) and its output head (`get_output_embeddings()`). The vision
  tower, the multimodal connector and the embeddings stay in their dtype.
- "bridge": the projector's and the fusion blocks' `nn.Linear` layers and the LoRA branches (`lora_A` / `lora_B`,
  which peft keeps as separate Linear modules inside the LM: LoRA is never merged into the base weights in SAFE).
- "both": the union.

Schemes: "int8-weight" (torchao Int8WeightOnlyConfig: int8 weights with a float32 scale per output row, float
activations) and "int8-dynamic" (Int8DynamicActivationInt8WeightConfig: activations quantized per token at run
time, int8 x int8 matmul). Quantized weights become torchao tensor subclasses (`Int8Tensor`), whose storage is
their inner tensors; `tensor_bytes` counts those, where `numel * element_size` would count them as float32.

Gate-0 and no-audio rows still take the base's own path (torch.where / the bare base call), so with a quantized
base they equal the same quantized base without SAFE, bit for bit; `quantize_base` quantizes a bare base exactly as
`quantize(model, "base", ...)` does, for that comparison. A quantized model is for inference: its bridge cannot be
trained further or saved as a float32 bridge.

torchao is imported lazily, here. On a CPU-only machine its import logs that its CUDA kernel libraries cannot be
loaded, plus a torch deprecation notice about its enum registration; those exact records are dropped project-wide
by shared.import_noise (peft imports torchao through transformers whenever it is installed, so the noise would
otherwise show on every command).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from stage_a.fusion import decoder_layers_path
from stage_a.model import SafeModel

log = logging.getLogger(__name__)

TARGETS = ("base", "bridge", "both")
SCHEMES = ("int8-weight", "int8-dynamic")
LORA_MARK = ".lora_"


def scheme_config(scheme: str) -> Any:
    """The torchao config of a scheme (torchao imported here); a ValueError for an unknown scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantization scheme is {scheme!r}; expected one of {SCHEMES}")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    # set_inductor_config=False: torchao would otherwise change global torch.compile settings, unused here.
    if scheme == "int8-weight":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)


def base_linear_names(base: nn.Module, layers_path: str | None = None) -> list[str]:
    """Names (in `base`) of the base LM's frozen Linear layers and its output head; LoRA branches excluded."""
    lm = decoder_layers_path(base, layers_path).removesuffix(".layers")
    head = base.get_output_embeddings()
    return [name for name, module in base.named_modules()
            if isinstance(module, nn.Linear) and LORA_MARK not in name
            and (name.startswith(f"{lm}.") or module is head)]


def bridge_linear_names(model: SafeModel) -> list[str]:
    """Names (in `model`) of the bridge's Linear layers: projector, fusion blocks and LoRA branches."""
    own = [f"{part}.{name}" for part in ("projector", "fusion")
           for name, module in getattr(model, part).named_modules() if isinstance(module, nn.Linear)]
    lora = [f"base.{name}" for name, module in model.base.named_modules()
            if isinstance(module, nn.Linear) and LORA_MARK in name]
    return own + lora


def target_linear_names(model: SafeModel, target: str) -> list[str]:
    """Names (in `model`) of the Linear layers `quantize` converts for `target`."""
    if target not in TARGETS:
        raise ValueError(f"quantization target is {target!r}; expected one of {TARGETS}")
    base = [f"base.{name}" for name in base_linear_names(model.base, model.bridge_config.fusion.layers_path)]
    return {"base": base, "bridge": bridge_linear_names(model), "both": base + bridge_linear_names(model)}[target]


def _quantize_named(root: nn.Module, names: list[str], scheme: str) -> list[str]:
    config = scheme_config(scheme)
    if not names:
        raise ValueError(f"no Linear layers to quantize in {type(root).__name__}; expected at least one")
    from torchao.quantization import quantize_

    wanted = set(names)
    quantize_(root, config, filter_fn=lambda module, fqn: fqn in wanted)
    missed = sorted(name for name in names if not is_quantized(root.get_submodule(name).weight))
    if missed:
        raise RuntimeError(f"torchao left {len(missed)} Linear layers unquantized, e.g. {missed[0]}")
    log.info("quantized %d Linear layers with %s", len(names), scheme)
    return names


def quantize(model: SafeModel, target: str, scheme: str) -> list[str]:
    """Quantize `model`'s Linear layers of `target` ("base", "bridge", "both") in place with `scheme`; returns their names."""
    names = target_linear_names(model, target)
    return _quantize_named(model, names, scheme)


def quantize_base(base: nn.Module, scheme: str, layers_path: str | None = None) -> list[str]:
    """Quantize a bare base model's LM Linear layers in place, as `quantize(..., "base", scheme)` does inside SAFE."""
    return _quantize_named(base, base_linear_names(base, layers_path), scheme)


def is_quantized(tensor: torch.Tensor) -> bool:
    """True for a torchao quantized tensor (a tensor subclass made of inner tensors)."""
    return hasattr(tensor, "__tensor_flatten__")


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Storage bytes of a tensor; for a torchao subclass, the sum over its inner tensors (int8 data, scales, ...)."""
    if is_quantized(tensor):
        inner, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in inner)
    return tensor.numel() * tensor.element_size()


def parameter_bytes(params: Iterable[torch.Tensor]) -> int:
    """Storage bytes of parameters, each distinct tensor counted once (tied weights share storage)."""
    unique = {id(p): p for p in params}
    return sum(tensor_bytes(p) for p in unique.values())


def component_bytes(model: SafeModel) -> dict[str, int]:
    """Parameter bytes of the frozen base (LoRA excluded) and of the bridge (projector, fusion, LoRA)."""
    base = [p for name, p in model.base.named_parameters() if LORA_MARK not in name]
    lora = [p for name, p in model.base.named_parameters() if LORA_MARK in name]
    bridge = [*model.projector.parameters(), *model.fusion.parameters(), *lora]
    return {"base": parameter_bytes(base), "bridge": parameter_bytes(bridge)}
