"""A peft LoRA model's exchanged state, by peft's own helpers, and FFA-LoRA's rule. Tensors
travel under state-dict names (``...qkv.lora_A.default.weight``), matched by tensor identity to
peft's (``...qkv.lora_A.weight``)."""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from fedvit.keys import LORA_A as FFA_FROZEN  # FFA-LoRA freezes, and does not exchange, lora_A


def freeze_ffa(model: PeftModel) -> None:
    """Make a fresh LoRA model FFA-LoRA: freeze every ``lora_A``; ``adapter_state`` drops them."""
    for name, param in model.named_parameters():
        if FFA_FROZEN in name:
            param.requires_grad_(False)
    model.fedvit_ffa = True


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """``{state-dict name: tensor}`` a LoRA model exchanges, in state-dict order, detached, sharing
    memory: peft's adapter state dict (LoRA matrices, head), less ``lora_A`` under FFA-LoRA."""
    return {name: tensor for name, (_, tensor) in _peft_names(model).items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load exchanged tensors with ``peft.set_peft_model_state_dict``; ``KeyError``: a name not
    exchanged; ``RuntimeError``: a shape does not fit, or peft did not load a tensor."""
    names = _peft_names(model)
    result = set_peft_model_state_dict(model, {names[k][0]: v for k, v in state.items()})
    if result.unexpected_keys:
        raise RuntimeError(f"peft did not load {sorted(result.unexpected_keys)[:3]}")


def _peft_names(model: PeftModel) -> dict[str, tuple[str, torch.Tensor]]:
    """``{state-dict name: (peft's name, tensor)}`` of the exchanged tensors."""
    state = model.state_dict()
    peft_state = get_peft_model_state_dict(model, state_dict=state, save_embedding_layers=False)
    peft_name = {id(tensor): name for name, tensor in peft_state.items()}
    found = [name for name, tensor in state.items() if id(tensor) in peft_name]
    if len(found) != len(peft_state):  # peft copied or renamed a tensor: not ours to guess
        raise RuntimeError("peft's adapter state holds tensors the model's state dict lacks")
    ffa = getattr(model, "fedvit_ffa", False)
    return {name: (peft_name[id(state[name])], state[name]) for name in found
            if not (ffa and FFA_FROZEN in name)}
