"""Model: which tensors train and travel, parameter counts, seeding, weights files."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.model.build import FusedLoraLinear, build_model, wrap_lora
from fedvit.model.tensors import (
    backbone_fingerprint,
    count_parameters,
    exchanged_state,
    input_stats,
    load_exchanged,
)

FAST = {"model-name": "test_vit", "img-size": 16, "patch-size": 4, "weights-path": ""}
NUM_CLASSES = 10
# test_vit: embed dim 64, depth 6, qkv 64 -> 192
EMBED, DEPTH, QKV_OUT, R = 64, 6, 192, 8
LORA_PER_LAYER = R * EMBED + QKV_OUT * R  # lora_A (r x 64) + lora_B (192 x r)
HEAD_PARAMS = EMBED * NUM_CLASSES + NUM_CLASSES
PREFIX = "base_model.model."


def _cfg(**overrides) -> AppConfig:
    return AppConfig.from_run_config({**FAST, **overrides})


def _plain_vit(seed: int, name: str = "test_vit", num_classes: int = NUM_CLASSES) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, img_size=16, patch_size=4, num_classes=num_classes)


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- fedlora


def test_fedlora_trainables_are_qkv_adapters_and_head() -> None:
    model = build_model(_cfg(), NUM_CLASSES)
    assert isinstance(model, PeftModel)
    qkv = [n for n, _ in model.named_modules() if n.endswith(".qkv")]
    assert qkv == [f"{PREFIX}blocks.{i}.attn.qkv" for i in range(DEPTH)]
    expected = {f"{m}.lora_{ab}.default.weight" for m in qkv for ab in "AB"} | {
        f"{PREFIX}head.modules_to_save.default.weight",
        f"{PREFIX}head.modules_to_save.default.bias",
    }
    trainable = _trainable(model)
    assert set(trainable) == expected
    exchanged = exchanged_state(model)
    assert set(exchanged) == expected
    for name, tensor in exchanged.items():
        assert torch.equal(tensor, trainable[name])
        assert not tensor.requires_grad
    assert trainable[f"{PREFIX}blocks.0.attn.qkv.lora_A.default.weight"].shape == (R, EMBED)
    assert trainable[f"{PREFIX}blocks.0.attn.qkv.lora_B.default.weight"].shape == (QKV_OUT, R)
    assert trainable[f"{PREFIX}head.modules_to_save.default.weight"].shape == (
        NUM_CLASSES, EMBED)


@pytest.mark.parametrize("aggregation", ["naive", "ffa"])
def test_exchanged_is_peft_adapter_state_minus_ffa_lora_a(aggregation: str) -> None:
    """What travels is peft's adapter state dict (LoRA matrices and the modules_to_save
    head), under the model's own names; FFA-LoRA leaves every lora_A out, and only those."""
    model = build_model(_cfg(**{"lora-aggregation": aggregation}), NUM_CLASSES)
    peft_state = get_peft_model_state_dict(model)  # peft drops ".default" and the wrapper
    exchanged = exchanged_state(model)
    as_peft = {k.replace(".modules_to_save.default.", ".").replace(".default.", "."): v
               for k, v in exchanged.items()}
    frozen = {k for k in peft_state if ".lora_A." in k} if aggregation == "ffa" else set()
    assert len(frozen) == (DEPTH if aggregation == "ffa" else 0)
    assert set(as_peft) == set(peft_state) - frozen
    for key, tensor in as_peft.items():
        assert torch.equal(tensor, peft_state[key]), key
    assert list(exchanged) == list(_trainable(model))  # and exactly what trains, in order


def test_fedlora_parameter_count() -> None:
    model = build_model(_cfg(), NUM_CLASSES)
    plain_total = sum(p.numel() for p in _plain_vit(0).parameters())
    expected_trainable = DEPTH * LORA_PER_LAYER + HEAD_PARAMS
    assert expected_trainable == 12_938
    assert count_parameters(model) == (plain_total + expected_trainable, expected_trainable)
    assert sum(t.numel() for t in exchanged_state(model).values()) == expected_trainable


def test_lora_rank_changes_count() -> None:
    model = build_model(_cfg(**{"lora-r": 2}), NUM_CLASSES)
    assert count_parameters(model)[1] == DEPTH * (2 * EMBED + QKV_OUT * 2) + HEAD_PARAMS


def test_fedlora_forward_shape_and_input_stats() -> None:
    model = build_model(_cfg(), NUM_CLASSES)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, NUM_CLASSES)
    assert input_stats(model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _fused_and_peft_pair() -> tuple[PeftModel, PeftModel]:
    """The same LoRA model with the fused forward and with peft's, B made non-zero."""
    cfg = _cfg()
    fused = wrap_lora(_plain_vit(0), cfg)
    plain = wrap_lora(_plain_vit(0), cfg, fused=False)
    torch.manual_seed(1)
    for name, param in fused.named_parameters():
        if ".lora_B." in name:
            param.data.normal_(0, 0.1)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def test_fused_lora_forward_and_gradients_equal_peft() -> None:
    fused, plain = _fused_and_peft_pair()
    qkv = [m for n, m in fused.named_modules() if n.endswith(".qkv")]
    assert len(qkv) == DEPTH and all(isinstance(m, FusedLoraLinear) for m in qkv)
    assert not any(isinstance(m, FusedLoraLinear) for m in plain.modules())
    x = torch.randn(4, 3, 16, 16)
    outs = []
    for model in (fused, plain):
        out = model(x)
        out.square().sum().backward()
        outs.append((out.detach(), {n: p.grad for n, p in _trainable(model).items()}))
    (out_f, grads_f), (out_p, grads_p) = outs
    assert out_f.abs().max() > 0
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    assert grads_f.keys() == grads_p.keys() and len(grads_f) == 2 * DEPTH + 2
    for name in grads_f:
        assert grads_f[name].abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-5)


def test_fused_lora_under_autocast_in_evaluation_and_when_merged() -> None:
    fused, plain = _fused_and_peft_pair()
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, out_p = fused(x), plain(x)
    assert out_f.dtype == torch.bfloat16
    torch.testing.assert_close(out_f.float(), out_p.float(), rtol=0.05, atol=0.05)
    expected = plain(x).detach()
    weights = {k: v.clone() for k, v in fused.state_dict().items()}
    fused.eval()
    with torch.no_grad():  # evaluation folds B·A into the weight, leaving the weights alone
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, weights[k]) for k, v in fused.state_dict().items())
    fused.merge_adapter()  # merged weights take peft's own path
    torch.testing.assert_close(fused(x).detach(), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- fedavg


def test_fedavg_exchanges_full_state_dict() -> None:
    model = build_model(_cfg(strategy="fedavg"), NUM_CLASSES)
    assert not isinstance(model, PeftModel)
    state = model.state_dict()
    exchanged = exchanged_state(model)
    assert list(exchanged) == list(state)
    for name, tensor in state.items():
        assert torch.equal(exchanged[name], tensor)
    params = dict(model.named_parameters())
    assert all(p.requires_grad for p in params.values())
    total = sum(p.numel() for p in params.values())
    assert count_parameters(model) == (total, total)
    assert total == sum(p.numel() for p in _plain_vit(0).parameters())


def test_vit_base_parameter_counts() -> None:
    common = {"model-name": "vit_base_patch16_224", "img-size": 224, "patch-size": 0,
              "weights-path": "", "pretrained": False, "lora-r": 8,
              "lora-target-modules": "qkv"}
    plain = build_model(AppConfig.from_run_config({**common, "strategy": "fedavg"}), 100)
    assert count_parameters(plain) == (85_875_556, 85_875_556)
    lora = wrap_lora(plain, AppConfig.from_run_config({**common, "strategy": "fedlora"}))
    trainable = 12 * (8 * 768 + 3 * 768 * 8) + 768 * 100 + 100
    assert trainable == 371_812
    assert count_parameters(lora) == (85_875_556 + 371_812, 371_812)


# ---------------------------------------------------------------------------- seeding


def test_builds_are_bit_identical() -> None:
    first, second = build_model(_cfg(), NUM_CLASSES), build_model(_cfg(), NUM_CLASSES)
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    a, b = exchanged_state(first), exchanged_state(second)
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # lora_A and the head are random: equality above is not trivial
    lora_a = f"{PREFIX}blocks.0.attn.qkv.lora_A.default.weight"
    assert a[lora_a].abs().sum() > 0


def test_other_seed_other_model() -> None:
    base, other = build_model(_cfg(), NUM_CLASSES), build_model(_cfg(seed=7), NUM_CLASSES)
    assert backbone_fingerprint(base) != backbone_fingerprint(other)
    lora_a = f"{PREFIX}blocks.0.attn.qkv.lora_A.default.weight"
    assert not torch.equal(exchanged_state(base)[lora_a], exchanged_state(other)[lora_a])


def test_fingerprint_ignores_adapters_and_head() -> None:
    model = build_model(_cfg(), NUM_CLASSES)
    before = backbone_fingerprint(model)
    with torch.no_grad():
        for p in _trainable(model).values():
            p.add_(1.0)
    assert backbone_fingerprint(model) == before
    with torch.no_grad():
        model.get_base_model().blocks[0].attn.qkv.base_layer.weight[0, 0] += 1.0
    assert backbone_fingerprint(model) != before


# ---------------------------------------------------------------------------- weights files


def _poisoned_state(seed: int) -> dict[str, torch.Tensor]:
    """A plain test_vit state dict whose head is a constant no fresh init gives."""
    state = {k: v.clone().contiguous() for k, v in _plain_vit(seed).state_dict().items()}
    state["head.weight"].fill_(7.0)
    state["head.bias"].fill_(7.0)
    return state


def _save(state: dict[str, torch.Tensor], path: Path, wrap: str | None = None) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return path


@pytest.mark.parametrize(
    ("filename", "wrap"),
    [("backbone.safetensors", None), ("backbone.pth", None), ("ckpt.pth", "state_dict"),
     ("ckpt.pt", "model")],
)
def test_weights_file_round_trip(tmp_path: Path, filename: str, wrap: str | None) -> None:
    saved = _poisoned_state(seed=123)
    path = _save(saved, tmp_path / filename, wrap)
    model = build_model(_cfg(strategy="fedavg", **{"weights-path": str(path)}), NUM_CLASSES)
    state = model.state_dict()
    assert set(state) == set(saved)
    backbone = [k for k in saved if not k.startswith("head.")]
    for k in backbone:
        assert torch.equal(state[k], saved[k]), k
    # not trivially equal: the seeded random init differs from the file
    random_init = build_model(_cfg(strategy="fedavg"), NUM_CLASSES).state_dict()
    assert not torch.equal(random_init["blocks.0.attn.qkv.weight"],
                           saved["blocks.0.attn.qkv.weight"])
    # the head is fresh, seeded, and the same whichever backbone file was loaded
    assert not torch.any(state["head.weight"] == 7.0)
    assert not torch.any(state["head.bias"] == 7.0)
    other = _save(_poisoned_state(seed=321), tmp_path / "other.safetensors")
    reference = build_model(_cfg(strategy="fedavg", **{"weights-path": str(other)}),
                            NUM_CLASSES).state_dict()
    assert not torch.equal(reference["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert torch.equal(reference["head.weight"], state["head.weight"])
    assert torch.equal(reference["head.bias"], state["head.bias"])


def test_weights_file_under_lora(tmp_path: Path) -> None:
    saved = _poisoned_state(seed=123)
    path = _save(saved, tmp_path / "backbone.safetensors")
    model = build_model(_cfg(**{"weights-path": str(path)}), NUM_CLASSES)
    base = model.get_base_model()
    for i in range(DEPTH):
        assert torch.equal(base.blocks[i].attn.qkv.base_layer.weight,
                           saved[f"blocks.{i}.attn.qkv.weight"])
        assert torch.equal(base.blocks[i].mlp.fc1.weight, saved[f"blocks.{i}.mlp.fc1.weight"])
    head = exchanged_state(model)[f"{PREFIX}head.modules_to_save.default.weight"]
    assert not torch.any(head == 7.0)


def test_weights_file_with_other_head_size(tmp_path: Path) -> None:
    saved = {k: v.contiguous() for k, v in _plain_vit(5, num_classes=1000).state_dict().items()}
    headless = {k: v for k, v in saved.items() if not k.startswith("head.")}
    for name, state in [("head1000.safetensors", saved), ("headless.safetensors", headless)]:
        path = _save(state, tmp_path / name)
        model = build_model(_cfg(strategy="fedavg", **{"weights-path": str(path)}), NUM_CLASSES)
        got = model.state_dict()
        assert got["head.weight"].shape == (NUM_CLASSES, EMBED)
        assert torch.equal(got["blocks.5.mlp.fc2.weight"], saved["blocks.5.mlp.fc2.weight"])


def _misfit(kind: str) -> dict[str, torch.Tensor]:
    if kind == "wider":  # embed dim 96
        return {k: v.contiguous() for k, v in _plain_vit(1, "test_vit3").state_dict().items()}
    if kind == "test_vit2":  # 8 blocks and a register token
        return {k: v.contiguous() for k, v in _plain_vit(1, "test_vit2").state_dict().items()}
    state = _plain_vit(1).state_dict()  # truncated: the last block is missing
    return {k: v.contiguous() for k, v in state.items() if not k.startswith("blocks.5.")}


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        ("wider", "size mismatch for pos_embed"),
        ("test_vit2", "unexpected 43 ['reg_token', 'blocks.6."),
        ("truncated", "missing 12 tensors ['blocks.5.norm1.weight', 'blocks.5.norm1.bias', "
                      "'blocks.5.attn.qkv.weight'], unexpected 0 []"),
    ],
)
def test_weights_file_that_does_not_fit(tmp_path: Path, kind: str, detail: str) -> None:
    path = _save(_misfit(kind), tmp_path / f"{kind}.safetensors")
    with pytest.raises(ConfigError) as info:
        build_model(_cfg(**{"weights-path": str(path)}), NUM_CLASSES)
    message = str(info.value)
    assert message.startswith(f"'weights-path' = '{path}' does not fit the model: ")
    assert detail in message


def test_unreadable_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError) as info:
        build_model(_cfg(**{"weights-path": str(path)}), NUM_CLASSES)
    assert str(info.value).startswith(f"'weights-path' = '{path}' cannot be read: ")


# ---------------------------------------------------------------------------- LoRA targets


def test_unknown_lora_target_lists_linear_layers() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(_cfg(**{"lora-target-modules": "nope"}), NUM_CLASSES)
    assert str(info.value) == (
        "invalid run config:\n  - 'lora-target-modules' = 'nope' is not allowed: "
        "['nope'] are not linear layers of "
        "'test_vit'; must name linear layers of the backbone, which are "
        "['fc1', 'fc2', 'proj', 'qkv']"
    )


@pytest.mark.parametrize("target", ["norm1", "patch_embed"])
def test_non_linear_lora_target_is_a_config_error(target: str) -> None:
    with pytest.raises(ConfigError, match="are not linear layers of 'test_vit'"):
        build_model(_cfg(**{"lora-target-modules": target}), NUM_CLASSES)


def test_head_as_lora_target_is_refused_as_the_head_not_as_non_linear() -> None:
    """The head is linear; it is refused because it is trained whole."""
    with pytest.raises(ConfigError) as info:
        build_model(_cfg(**{"lora-target-modules": "qkv,head"}), NUM_CLASSES)
    assert str(info.value) == (
        "invalid run config:\n  - 'lora-target-modules' = 'qkv,head' is not allowed: "
        "['head'] is the classifier head, which is trained whole and exchanged in full, not "
        "adapted; must name linear layers of the backbone, which are "
        "['fc1', 'fc2', 'proj', 'qkv']")
    assert "not linear" not in str(info.value)


def test_proj_target_adapts_attention_proj_only() -> None:
    model = build_model(_cfg(**{"lora-target-modules": "proj"}), NUM_CLASSES)
    adapted = {n.split(".lora_")[0] for n in exchanged_state(model) if ".lora_" in n}
    assert len(adapted) == 6
    assert all(n.endswith("attn.proj") for n in adapted)


def test_several_lora_targets() -> None:
    model = build_model(_cfg(**{"lora-target-modules": "qkv, fc1"}), NUM_CLASSES)
    adapted = {n.split(".lora_")[0] for n in _trainable(model) if ".lora_" in n}
    assert adapted == {f"{PREFIX}blocks.{i}.{m}" for i in range(DEPTH)
                       for m in ("attn.qkv", "mlp.fc1")}
    assert _plain_vit(0).blocks[0].mlp.fc1.out_features == 192  # test_vit: mlp ratio 3
    fc1 = R * EMBED + 192 * R
    assert count_parameters(model)[1] == DEPTH * (LORA_PER_LAYER + fc1) + HEAD_PARAMS


# ---------------------------------------------------------------------------- load_exchanged


@pytest.mark.parametrize("strategy", ["fedlora", "fedavg"])
def test_load_exchanged_key_mismatch(strategy: str) -> None:
    model = build_model(_cfg(strategy=strategy), NUM_CLASSES)
    state = {k: v.clone() for k, v in exchanged_state(model).items()}
    dropped = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != dropped}
    with pytest.raises(ValueError) as info:
        load_exchanged(model, missing)
    assert str(info.value) == (
        f"exchanged tensors do not match the model: 1 missing ['{dropped}'], 0 extra []"
    )
    extra = {**state, "blocks.0.attn.extra": torch.zeros(1)}
    with pytest.raises(ValueError) as info:
        load_exchanged(model, extra)
    assert str(info.value) == (
        "exchanged tensors do not match the model: 0 missing [], 1 extra "
        "['blocks.0.attn.extra']"
    )


@pytest.mark.parametrize("aggregation", ["naive", "ffa"])
def test_load_exchanged_lora_updates_only_exchanged(aggregation: str) -> None:
    model = build_model(_cfg(**{"lora-aggregation": aggregation}), NUM_CLASSES)
    fingerprint = backbone_fingerprint(model)
    gen = torch.Generator().manual_seed(0)
    new = {k: torch.randn(v.shape, generator=gen) for k, v in exchanged_state(model).items()}
    load_exchanged(model, new)
    got = exchanged_state(model)
    assert set(got) == set(new)
    for name, tensor in new.items():
        assert torch.equal(got[name], tensor), name
    assert backbone_fingerprint(model) == fingerprint
    # the loaded adapters take part in the forward pass
    fresh = build_model(_cfg(**{"lora-aggregation": aggregation}), NUM_CLASSES)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), fresh(x))


def test_load_exchanged_fedavg_round_trip() -> None:
    model = build_model(_cfg(strategy="fedavg"), NUM_CLASSES)
    other = build_model(_cfg(strategy="fedavg", seed=9), NUM_CLASSES)
    load_exchanged(model, {k: v.clone() for k, v in exchanged_state(other).items()})
    assert backbone_fingerprint(model) == backbone_fingerprint(other)
    for name, tensor in exchanged_state(other).items():
        assert torch.equal(exchanged_state(model)[name], tensor)
