"""Which tensors travel, the backbone's fingerprint and the input statistics.

One answer for a model built with timm and peft (``fedvit.model.build``) and for the same model
loaded from the model cache (``fedvit.model.cache.ExportedModel``). A built model is
answered with its libraries' own helpers: peft's adapter state dict
(``fedvit.model.adapters``) and timm's data config. A cached model carries the answers recorded
from those helpers when it was exported, so a ClientApp process that loads it never imports
timm or peft (a built model exists only once they are imported, so asking about one costs
nothing more). ``fedvit.model.build`` re-exports these functions.
"""

from __future__ import annotations

import hashlib
import sys

import torch
from torch import nn

from fedvit.keys import HEAD


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft LoRA model (built, or loaded from the model cache).

    Args:
        model: a model ``fedvit.model.build.build_model`` built, or an ``ExportedModel``.

    Returns:
        True for a LoRA model (``fedlora``), False for a plain ViT (``fedavg``).
    """
    lora = getattr(model, "fedvit_lora", None)  # set by fedvit.model.cache.ExportedModel
    if lora is not None:
        return bool(lora)
    peft = sys.modules.get("peft")  # not imported: no peft model can exist
    return peft is not None and isinstance(model, peft.PeftModel)


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a strategy exchanges, under the names they travel with.

    A plain ViT (``fedavg``) exchanges its whole state dict; a LoRA model its adapter state
    (``fedvit.model.adapters.adapter_state``: peft's adapter state dict, FFA-LoRA's frozen
    ``lora_A`` left out); a cached model the names recorded from its build.

    Args:
        model: as for ``is_lora``.

    Returns:
        ``{state-dict name: tensor}`` in state-dict order; the tensors are detached and
        share memory with the model (dtype and device as they are).
    """
    names = getattr(model, "fedvit_exchanged", None)  # set by fedvit.model.cache.ExportedModel
    if names is not None:
        state = model.state_dict()
        return {name: state[name] for name in names}
    if is_lora(model):
        from fedvit.model.adapters import adapter_state  # peft is imported already

        return adapter_state(model)
    return dict(model.state_dict())


def load_exchanged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load exchanged tensors into ``model`` (copied into its own tensors).

    Args:
        model: as for ``is_lora``.
        state: ``{name: tensor}`` with exactly the names ``exchanged_state`` gives.

    Raises:
        ValueError: the names are not exactly the exchanged ones.
        RuntimeError: a tensor's shape does not fit.
    """
    expected = set(exchanged_state(model))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(
            f"exchanged tensors do not match the model: {len(missing)} missing "
            f"{sorted(missing)[:3]}, {len(extra)} extra {sorted(extra)[:3]}"
        )
    if is_lora(model) and getattr(model, "fedvit_exchanged", None) is None:
        from fedvit.model.adapters import load_adapter_state  # peft is imported already

        load_adapter_state(model, state)
    else:
        model.load_state_dict(state, strict=not is_lora(model))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Parameter counts.

    Args:
        model: any model.

    Returns:
        (all parameters, trainable parameters), in elements.
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def backbone_fingerprint(model: nn.Module) -> str:
    """A digest of the frozen backbone: every tensor that is neither head nor exchanged
    (so a frozen FFA ``lora_A`` counts, a trained adapter does not).

    Args:
        model: as for ``is_lora``.

    Returns:
        16 hex digits of SHA-256 over the names and bytes, in name order.
    """
    exchanged = set(exchanged_state(model)) if is_lora(model) else set()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in exchanged or f"{HEAD}." in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) the ViT's inputs are normalised with: timm's
    ``resolve_model_data_config`` of the built ViT, or what a cached model recorded.

    Args:
        model: as for ``is_lora``.

    Returns:
        (mean, std), one float per input channel, on the [0, 1] pixel scale.
    """
    stats = getattr(model, "fedvit_input_stats", None)  # an ExportedModel carries its own
    if stats is None:
        from timm.data import resolve_model_data_config  # timm is imported already

        base = model.get_base_model() if is_lora(model) else model
        data = resolve_model_data_config(base)
        stats = (data["mean"], data["std"])
    return tuple(stats[0]), tuple(stats[1])
