"""Which tensors travel, and the backbone's fingerprint: torch only.

The answers for a model built with timm and peft (``fedvit.model``) and for the same model
loaded from the traced-model cache (``fedvit.traced.TracedModel``). Nothing here imports
timm or peft: a ClientApp process that loads its model from the cache never pays for
them (``fedvit.model`` re-exports these functions for everyone else).
"""

from __future__ import annotations

import hashlib
import sys

from torch import nn

HEAD = "head"


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft LoRA model (built, or loaded from the traced cache).

    A peft model exists only once peft has been imported, so a process that never
    imported it is not asked to import it here.
    """
    lora = getattr(model, "fedvit_lora", None)  # set by fedvit.traced.TracedModel
    if lora is not None:
        return bool(lora)
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def exchanged_state(model: nn.Module) -> dict:
    """The tensors a strategy exchanges: the whole state dict of a plain ViT (``fedavg``),
    or exactly the trainable parameters (LoRA adapters and head) of a peft model."""
    if is_lora(model):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in model.state_dict().items()}


def load_exchanged(model: nn.Module, state: dict) -> None:
    """Load exchanged tensors; the key set must be exactly the exchanged one."""
    expected = set(exchanged_state(model))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(
            f"exchanged tensors do not match the model: {len(missing)} missing "
            f"{sorted(missing)[:3]}, {len(extra)} extra {sorted(extra)[:3]}"
        )
    model.load_state_dict(state, strict=not is_lora(model))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the frozen backbone: every tensor that is neither head nor exchanged
    (so a frozen FFA ``lora_A`` counts, a trained adapter does not)."""
    exchanged = set(exchanged_state(model)) if is_lora(model) else set()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in exchanged or f"{HEAD}." in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def input_stats(model: nn.Module) -> tuple[tuple, tuple]:
    """The (mean, std) the ViT's inputs are normalised with."""
    stats = getattr(model, "fedvit_input_stats", None)  # a TracedModel carries its own
    if stats is not None:
        return tuple(stats[0]), tuple(stats[1])
    base = model.get_base_model() if is_lora(model) else model
    return tuple(base.pretrained_cfg["mean"]), tuple(base.pretrained_cfg["std"])
