"""The optimizer's groups and memory choices for transformer backbones: ViTPose's layer-wise lr
decay (pose/engine/optimizer.py) and activation checkpointing."""

import pytest
import torch

from pose.config import ConfigError, load_config
from pose.engine.optimizer import build_optimizer
from pose.models import build_model


def test_layer_decay_gives_each_vit_layer_its_lr_and_spares_norms_from_weight_decay():
    overrides = ["model.backbone=vitpose_s", "model.deconv_layers=2", "optimizer.name=adamw"]
    overrides += ["optimizer.layer_decay=0.75", "optimizer.weight_decay=0.1"]
    cfg = load_config(None, overrides)
    model = build_model(cfg.model, 17)
    optimizer = build_optimizer(model, cfg.optimizer, lr=5e-4)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(params)

    def lr(name: str) -> float:
        return group_of[id(params[name])]["lr"]

    def decay(name: str) -> float:
        return group_of[id(params[name])]["weight_decay"]

    depth = 12  # ViT-S
    assert lr("final_layer.weight") == pytest.approx(5e-4)
    assert lr("backbone.vit.norm.weight") == pytest.approx(5e-4)  # ViTPose: the top layer
    for i in (0, 5, 11):
        assert lr(f"backbone.vit.blocks.{i}.attn.qkv.weight") == pytest.approx(
            5e-4 * 0.75 ** (depth - i)
        )
    assert lr("backbone.vit.patch_embed.proj.weight") == pytest.approx(5e-4 * 0.75 ** (depth + 1))
    assert lr("backbone.vit.pos_embed") == lr("backbone.vit.patch_embed.proj.weight")
    assert decay("backbone.vit.blocks.3.mlp.fc1.weight") == 0.1
    assert decay("backbone.vit.blocks.3.mlp.fc1.bias") == 0.0
    assert decay("backbone.vit.blocks.3.norm1.weight") == 0.0
    assert decay("backbone.vit.pos_embed") == 0.0
    assert decay("deconv_layers.0.weight") == 0.1
    # the schedule scales every group alike: a LambdaLR keeps the ratios
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    schedule.step()
    assert lr("backbone.vit.blocks.11.attn.qkv.weight") == pytest.approx(5e-4 * 0.75 * 0.5)


def test_one_group_without_layer_decay_and_none_for_a_backbone_without_layers():
    cfg = load_config(None, ["model.backbone=resnet18", "optimizer.weight_decay=0.01"])
    optimizer = build_optimizer(build_model(cfg.model, 17), cfg.optimizer, lr=1e-3)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match=r"optimizer\.layer_decay.*'resnet18' has no layers"):
        load_config(None, ["model.backbone=resnet18", "optimizer.layer_decay=0.75"])


def test_activation_checkpointing_recomputes_blocks_to_the_same_gradients():
    """ViTPose-S with drop path: the same loss and gradients with the blocks' activations kept
    or recomputed (the RNG is replayed, so the recomputation draws the same masks)."""
    overrides = ["model.backbone=vitpose_s", "model.deconv_layers=2", "model.drop_path=0.2"]
    cfg = load_config(None, [*overrides, "engine.activation_checkpointing=true"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 5).train()
    x = torch.randn(2, 3, 64, 48)
    grads = []
    for recompute in (False, True):
        model.backbone.set_grad_checkpointing(recompute)
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(x).square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    qkv = "backbone.vit.blocks.4.attn.qkv.weight"
    assert grads[0][qkv].abs().sum() > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-8, msg=name)
    with pytest.raises(ConfigError, match=r"engine\.activation_checkpointing.*'resnet18'"):
        load_config(None, ["model.backbone=resnet18", "engine.activation_checkpointing=true"])
