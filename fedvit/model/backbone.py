"""The plain timm ViT: built, loaded from weights files, checked against rules only the built
model can show. timm is imported inside functions: a model-cache hit never imports it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.rules import FITTING_WEIGHTS, target_modules
from fedvit.model.tensors import HEAD


def create_vit(cfg: AppConfig, num_classes: int, pretrained: bool | None = None) -> nn.Module:
    """timm's ``model-name`` at ``img-size``/``patch-size``, seeded with ``seed``, hub weights
    if ``pretrained`` (None: ``cfg.pretrained``): float32 ``(B, 3, img-size, img-size)`` ->
    ``(B, num_classes)``. ``ConfigError``: not buildable at these sizes, or no hub weights."""
    import timm
    kwargs: dict = {"num_classes": num_classes, "img_size": cfg.img_size}
    if cfg.patch_size:
        kwargs["patch_size"] = cfg.patch_size
    torch.manual_seed(cfg.seed)
    use_hub = cfg.pretrained if pretrained is None else pretrained
    try:
        return timm.create_model(cfg.model_name, pretrained=use_hub, **kwargs)
    except Exception as err:
        if not use_hub:
            raise ConfigError(f"'model-name' = {cfg.model_name!r} cannot be built with "
                              f"'img-size' = {cfg.img_size}, 'patch-size' = {cfg.patch_size}: "
                              f"{err}") from err
        raise ConfigError(f"'pretrained' = true: hub weights for {cfg.model_name!r} could not "
                          f"be loaded ({type(err).__name__}: {err}); set 'weights-path' to a "
                          "local file instead") from err


def load_backbone_weights(model: nn.Module, path: Path, source: str) -> None:
    """Load ``.safetensors`` or a torch checkpoint (``weights_only``; maybe under ``state_dict``,
    ``model`` or ``module``) into a timm ViT, embeddings resampled by timm's filter, the head
    skipped if missing or resized; ``ConfigError`` naming ``source``: unreadable, or not fitting."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "module"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        state = checkpoint_filter_fn(dict(state), model)
    except Exception as err:
        raise ConfigError(f"{source} = {str(path)!r} cannot be read: {err}") from err
    own = model.state_dict()
    state = {k: v for k, v in state.items()
             if not (k.startswith(HEAD + ".") and k in own and own[k].shape != v.shape)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ConfigError(f"{source} = {str(path)!r} does not fit the model: {err}; "
                          f"{FITTING_WEIGHTS}") from err
    missing = [k for k in missing if not k.startswith(HEAD + ".")]
    if missing or unexpected:
        raise ConfigError(f"{source} = {str(path)!r} does not fit the model: missing "
                          f"{len(missing)} tensors {missing[:3]}, unexpected {len(unexpected)} "
                          f"{list(unexpected)[:3]}; {FITTING_WEIGHTS}")


def model_errors(cfg: AppConfig, model: nn.Module) -> list[str]:
    """One message per rule the built plain ViT breaks: ``img-size`` must be the size it was
    built for and a multiple of its patch (else the patch convolution crops, or
    ``dynamic_img_pad`` pads, the input); ``lora-target-modules`` must name its linears."""
    errors = []
    pe = model.patch_embed
    ph, pw = tuple(pe.patch_size)
    img_size = tuple(pe.img_size) if pe.img_size else (0, 0)
    patch = (f"'patch-size' = {cfg.patch_size}" if cfg.patch_size
             else f"'patch-size' = 0 (the model's own patch size, {ph})")
    if img_size != (cfg.img_size, cfg.img_size):
        errors.append(f"'img-size' = {cfg.img_size} is not allowed with 'model-name' = "
                      f"{cfg.model_name!r}: the model is built for {img_size[0]}x{img_size[1]} "
                      f"inputs; must be {img_size[0]}")
    elif cfg.img_size % ph or cfg.img_size % pw:
        lo = max(ph, cfg.img_size // ph * ph)
        errors.append(f"'img-size' = {cfg.img_size} is not allowed with {patch} of "
                      f"{cfg.model_name!r}: the model would crop or pad the input; must be a "
                      f"multiple of {ph}, e.g. {lo} or {lo + ph}")
    if cfg.strategy == "fedlora":
        errors += lora_target_errors(cfg, adaptable_linears(model))
    return errors


def lora_target_errors(cfg: AppConfig, linear: list[str]) -> list[str]:
    """At most one message: the targets not among the ``linear`` layers (full names), the head
    told apart (it is linear, but trained whole)."""
    names = {full.rsplit(".", 1)[-1] for full in linear}
    targets = target_modules(cfg.lora_target_modules)
    head = [t for t in targets if t == HEAD or t.startswith(HEAD + ".")]
    unknown = [t for t in targets if t not in names and t not in head]
    if not unknown and not head:
        return []
    why = ([f"{unknown} are not linear layers of {cfg.model_name!r}"] if unknown else []) + (
        [f"{head} is the classifier head, which is trained whole and exchanged in full, "
         "not adapted"] if head else [])
    return [f"'lora-target-modules' = {cfg.lora_target_modules!r} is not allowed: "
            f"{'; '.join(why)}; must name linear layers of the backbone, which are "
            f"{sorted(names)}"]


def adaptable_linears(model: nn.Module) -> list[str]:
    """Full names, in module order, of the linear layers LoRA may adapt (not the head)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n != HEAD and not n.startswith(HEAD + ".")]
