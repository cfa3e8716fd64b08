"""Which tensors travel, the backbone's fingerprint, the input statistics (torch only): asked of
a timm/peft build, peft's and timm's helpers answer; an ``ExportedModel`` (model cache) carries
their answers recorded at export, so a process that loads it never imports timm or peft."""

from __future__ import annotations

import hashlib
import sys

import torch
from torch import nn

from fedvit.keys import HEAD, LORA_A


def is_lora(model: nn.Module) -> bool:
    lora = getattr(model, "fedvit_lora", None)  # set by fedvit.model.cache.ExportedModel
    if lora is not None:
        return bool(lora)
    peft = sys.modules.get("peft")  # not imported: no peft model can exist
    return peft is not None and isinstance(model, peft.PeftModel)


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{state-dict name: tensor}`` a strategy exchanges, in state-dict order, detached, sharing
    memory: a plain ViT's state dict; a LoRA model's peft adapter state dict (LoRA matrices,
    head) less ``lora_A`` under FFA-LoRA; a cached model's recorded names."""
    names = getattr(model, "fedvit_exchanged", None)  # set by fedvit.model.cache.ExportedModel
    if names is not None:
        state = model.state_dict()
        return {name: state[name] for name in names}
    if is_lora(model):
        return {name: tensor for name, (_, tensor) in _peft_names(model).items()}
    return dict(model.state_dict())


def load_exchanged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy exchanged tensors into ``model``; ``ValueError``: the names are not exactly
    ``exchanged_state``'s; ``RuntimeError``: a shape does not fit."""
    expected = set(exchanged_state(model))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(f"exchanged tensors do not match the model: {len(missing)} missing "
                         f"{sorted(missing)[:3]}, {len(extra)} extra {sorted(extra)[:3]}")
    if is_lora(model) and getattr(model, "fedvit_exchanged", None) is None:
        from peft import set_peft_model_state_dict  # imported already
        names = _peft_names(model)
        result = set_peft_model_state_dict(model, {names[k][0]: v for k, v in state.items()})
        if result.unexpected_keys:
            raise RuntimeError(f"peft did not load {sorted(result.unexpected_keys)[:3]}")
    else:
        model.load_state_dict(state, strict=not is_lora(model))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, in elements."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def backbone_fingerprint(model: nn.Module) -> str:
    """16 hex digits of SHA-256 over the names and bytes, in name order, of every tensor that
    is neither head nor exchanged (a frozen FFA ``lora_A`` counts, a trained adapter not)."""
    exchanged = set(exchanged_state(model)) if is_lora(model) else set()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in exchanged or f"{HEAD}." in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) on the [0, 1] pixel scale the inputs are normalised with:
    timm's ``resolve_model_data_config`` of the built ViT, or what a cached model recorded."""
    stats = getattr(model, "fedvit_input_stats", None)
    if stats is None:
        from timm.data import resolve_model_data_config  # timm is imported already
        base = model.get_base_model() if is_lora(model) else model
        data = resolve_model_data_config(base)
        stats = (data["mean"], data["std"])
    return tuple(stats[0]), tuple(stats[1])


def _peft_names(model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """``{state-dict name (``...lora_A.default.weight``): (peft's name (``...lora_A.weight``),
    tensor)}`` of a LoRA model's exchanged tensors, matched by identity (else ``RuntimeError``)."""
    from peft import get_peft_model_state_dict  # imported already
    state = model.state_dict()
    peft_state = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    peft_name = {id(tensor): name for name, tensor in peft_state.items()}
    found = [name for name, tensor in state.items() if id(tensor) in peft_name]
    if len(found) != len(peft_state):  # peft copied or renamed a tensor: not ours to guess
        raise RuntimeError("peft's adapter state holds tensors the model's state dict lacks")
    ffa = getattr(model, "fedvit_ffa", False)  # set by fedvit.model.build.wrap_lora
    return {name: (peft_name[id(state[name])], state[name]) for name in found
            if not (ffa and LORA_A in name)}
