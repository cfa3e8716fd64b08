"""The model a strategy trains: a timm ViT (``fedavg``) or it with peft LoRA (``fedlora``);
which of its tensors travel is ``fedvit.model.tensors``' answer."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from fedvit.config.appconfig import AppConfig, raise_errors
from fedvit.config.paths import PUBLIC_PRETRAIN, resolve_path
from fedvit.config.rules import target_modules
from fedvit.keys import LORA_A
from fedvit.model import backbone
from fedvit.model.pretrain import public_backbone
from fedvit.model.tensors import HEAD


def build_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """A plain or LoRA-wrapped ViT, CPU float32 ``(B, 3, S, S)`` -> ``(B, num_classes)``, seeded:
    bit-identical on server and clients. A weights file or the public backbone (built if missing)
    replaces the backbone, head fresh. ``ConfigError``: as ``fedvit.model.backbone``'s functions."""
    model = backbone.create_vit(cfg, num_classes)
    raise_errors(backbone.model_errors(cfg, model))
    if cfg.weights_path:
        if cfg.weights_path == PUBLIC_PRETRAIN:
            path, source = public_backbone(cfg), "'weights-path' (public pretraining)"
        else:
            path, source = resolve_path(cfg.weights_path), "'weights-path'"
        backbone.load_backbone_weights(model, path, source)
        torch.manual_seed(cfg.seed)
        model.reset_classifier(num_classes)
    return model if cfg.strategy == "fedavg" else wrap_lora(model, cfg)


def wrap_lora(model: nn.Module, cfg: AppConfig, fused: bool = True) -> PeftModel:
    """peft LoRA (seeded) on ``lora-target-modules`` of a plain ViT (wrapped in place); only
    adapters and head train (FFA-LoRA: not ``lora_A``). ``fused``: ``FusedLoraLinear``'s
    forward, else peft's (benchmarks). ``ConfigError``: a target is not a linear layer."""
    targets = target_modules(cfg.lora_target_modules)
    linear = backbone.adaptable_linears(model)
    raise_errors(backbone.lora_target_errors(cfg, linear))
    # Full names of linear layers only: "proj" must not also catch patch_embed.proj.
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=[f for f in linear if f.rsplit(".", 1)[-1] in targets],
                      modules_to_save=[HEAD])
    if fused:
        lora._register_custom_module({nn.Linear: FusedLoraLinear})
    torch.manual_seed(cfg.seed)
    peft_model = get_peft_model(model, lora)
    if cfg.lora_aggregation == "ffa":  # FFA-LoRA: A stays at its shared seeded init, unsent
        for name, param in peft_model.named_parameters():
            if LORA_A in name:
                param.requires_grad_(False)
        peft_model.fedvit_ffa = True
    return peft_model


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer (same names, state dict) with a leaner forward for plain LoRA.
    Training: ``base(x) + B(A(x))·s`` as two matmuls and one ``addmm`` scaling and adding in one
    kernel (peft: five operations, two full passes over the output). Eval without autograd:
    ``W + s·B·A`` folded into the weight (stored weights untouched), as fast as the plain ViT.
    Merged, disabled or several adapters, biases, DoRA and other variants run peft's forward."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        active = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
                or active[0] not in self.lora_A or active[0] in self.lora_variant
                or self.lora_bias[active[0]]):
            return super().forward(x, *args, **kwargs)
        name, base = active[0], self.base_layer
        lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
        scale = self.scaling[name]
        if not self.training and not torch.is_grad_enabled():
            weight = torch.addmm(base.weight, lora_b, lora_a, alpha=scale)
            return nn.functional.linear(x, weight, base.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = nn.functional.linear(flat, base.weight, base.bias)
        down = nn.functional.linear(self.lora_dropout[name](flat), lora_a)
        out = torch.addmm(out, down, lora_b.t(), alpha=scale)
        return out.view(x.shape[:-1] + out.shape[-1:])
