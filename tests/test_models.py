import json

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pose.config import ConfigError, ModelConfig, load_config
from pose.models import (
    BACKBONES,
    backbone_names,
    backbone_spec,
    build_model,
    load_pretrained,
    register_backbone,
)
from pose.models.attention import MeanFieldAttention, PartAttention
from pose.models.registry import Backbone, LayeredBackbone
from pose.models.summary import main as summary_main
from pose.models.summary import summarize
from pose.models.weights import WeightsError, load_model_weights

BACKBONE_NAMES = backbone_names()
# Trained forward and backward below; vitpose_l and vitpose_h are vitpose_b's code at other
# widths and depths (held to their published sizes by the counts test) and too slow on a CPU.
TRAINED_HERE = [b for b in BACKBONE_NAMES if b not in ("vitpose_l", "vitpose_h")]


def at_stride_4(backbone: str, **overrides) -> ModelConfig:
    """The model config of `backbone` whose head brings it to heatmaps at 1/4 of the input
    (ResNets: three deconvolutions, ViTPose's classic decoder: two)."""
    layers = (backbone_spec(backbone).stride // 4).bit_length() - 1
    return ModelConfig(backbone=backbone, deconv_layers=layers, **overrides)


ATTENTIONS = ("none", "holistic", "partwise")


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": "resnet18", "deconv_filters": 32, **overrides})


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_every_registered_spec_states_its_backbones_channels_and_stride(backbone):
    spec = backbone_spec(backbone)
    with torch.device("meta"):
        module = spec.builder(ModelConfig(backbone=backbone))
        features = module(torch.empty(1, 3, 256, 192))
    assert features.shape == (1, spec.channels, 256 // spec.stride, 192 // spec.stride)
    # the protocol the optimizer, checkpointing and weight loading rely on (registry.py)
    assert isinstance(module, Backbone)
    assert isinstance(module, LayeredBackbone) == (spec.layers > 0)
    if spec.layers:
        assert module.top_layer == spec.layers + 1


def test_a_backbone_is_added_by_registering_it_and_the_config_follows_its_stride():
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("resnet18", channels=512, stride=32)(lambda cfg: None)
    with pytest.raises(ConfigError, match=r"model\.backbone.*'stride4net' is not registered"):
        load_config(None, ["model.backbone=stride4net"])

    @register_backbone("stride4net", channels=8, stride=4)
    def stride4net(cfg) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2))

    try:
        cfg = load_config(None, ["model.backbone=stride4net", "model.deconv_layers=0"]).model
        assert cfg.output_stride == 4
        assert build_model(cfg, 5)(torch.randn(1, 3, 64, 48)).shape == (1, 5, 16, 12)
        with pytest.raises(ConfigError, match=r"model\.deconv_layers.*at most 2"):
            load_config(None, ["model.backbone=stride4net", "model.deconv_layers=3"])
        attended = load_config(
            None, ["model.backbone=stride4net", "model.deconv_layers=0", "model.attention=partwise"]
        ).model  # attention over the backbone's features when there is no deconvolution
        heatmaps, maps = build_model(attended, 5)(torch.randn(1, 3, 64, 48), return_attention=True)
        assert heatmaps.shape == (1, 5, 16, 12) and set(maps) == {"stage1", "holistic", "parts"}
    finally:
        del BACKBONES["stride4net"]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("backbone", TRAINED_HERE)
def test_forward_backward_every_variant(backbone, attention):
    torch.manual_seed(0)
    model = build_model(at_stride_4(backbone, attention=attention), num_joints=17)
    for h, w in ((256, 192), (384, 288)):
        model.zero_grad()
        heatmaps, maps = model(torch.randn(2, 3, h, w), return_attention=True)
        assert heatmaps.shape == (2, 17, h // 4, w // 4)
        heatmaps.square().mean().backward()
        assert model.final_layer.weight.grad.abs().sum() > 0
        if attention == "none":
            assert maps == {}
            continue
        for name in [f"stage{i + 1}" for i in range(len(model.holistic.stages))]:
            assert maps[name].min() > 0 and maps[name].max() < 1
        assert maps["holistic"].shape == (2, 1, h // 4, w // 4)
        attention_grads = [p.grad for p in model.holistic.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in attention_grads)
        if attention == "partwise":
            assert maps["parts"].shape == (2, 17, h // 4, w // 4)
            assert maps["parts"].min() > 0 and maps["parts"].max() < 1
            assert all(p.grad.abs().sum() > 0 for p in model.parts.parameters())


@pytest.mark.parametrize(
    ("backbone", "params_m", "published_gmacs"),
    [
        ("vitpose_s", 24.29, 5.26),
        ("vitpose_b", 89.99, 17.85),
        ("vitpose_l", 308.54, 59.78),
        ("vitpose_h", 637.21, 122.85),
    ],
)
def test_vitpose_sizes_match_the_official_counts(backbone, params_m, published_gmacs):
    """ViTPose with the classic decoder at 256x192, against the official repository's counts:
    parameters within 1%, multiply-adds (those of attention's products left out, as the
    published count leaves them out) within 5%."""
    row = summarize(at_stride_4(backbone), 17, (256, 192))
    assert row["params"] / 1e6 == pytest.approx(params_m, rel=0.01)
    assert row["gmacs"] - row["gmacs_attention"] == pytest.approx(published_gmacs, rel=0.05)
    assert row["gmacs_attention"] > 0 and row["heatmap"] == [64, 48]


@pytest.mark.parametrize(
    ("backbone", "params_m", "paper_gflops"), [("hrnet_w32", 28.5, 7.1), ("hrnet_w48", 63.6, 14.6)]
)
def test_hrnet_sizes_match_the_paper(backbone, params_m, paper_gflops):
    """The pose HRNet with its 1x1 head at 256x192 against the paper (Sun et al. 2019, Table
    1): parameters within 1%; its "GFLOPs" are multiply-adds / 2^30 (its code divides by
    1024^3), within 5%."""
    row = summarize(at_stride_4(backbone), 17, (256, 192))
    assert row["params"] / 1e6 == pytest.approx(params_m, rel=0.01)
    assert row["gmacs"] * 1e9 / 2**30 == pytest.approx(paper_gflops, rel=0.05)
    assert row["heatmap"] == [64, 48]


def test_vitpose_simple_decoder_upsamples_to_stride_4_with_a_3x3_convolution():
    """ViTPose's simple decoder: ReLU, bilinear x4, a 3x3 convolution; the classic decoder's
    two deconvolutions (4.20 M parameters with their BatchNorms) and its 1x1 convolution give
    way to 768 x 17 x 9 weights."""
    cfg = load_config(
        None, ["model.backbone=vitpose_b", "model.deconv_layers=0", "model.head=simple"]
    )
    assert cfg.model.output_stride == 4
    row = summarize(cfg.model, 17, (256, 192))
    classic = summarize(at_stride_4("vitpose_b"), 17, (256, 192))["params"]
    assert row["params"] == classic - 4_195_328 - (256 * 17 + 17) + (768 * 17 * 9 + 17)
    assert row["heatmap"] == [64, 48]
    small = load_config(None, ["model.backbone=vitpose_s", "model.deconv_layers=0"])
    small.model.head, small.model.attention = "simple", "holistic"
    heatmaps, maps = build_model(small.model, 5)(torch.randn(1, 3, 128, 96), return_attention=True)
    assert heatmaps.shape == (1, 5, 32, 24) and maps["holistic"].shape == (1, 1, 32, 24)
    for bad, key in (
        (["model.deconv_layers=2"], "model.deconv_layers"),
        (["model.deconv_layers=0", "model.attention=partwise"], "model.attention"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, ["model.backbone=vitpose_s", "model.head=simple", *bad])


def test_vitpose_trains_at_other_input_sizes_through_its_interpolated_positions():
    torch.manual_seed(0)
    model = build_model(at_stride_4("vitpose_s", deconv_filters=32), 5)
    for h, w in ((96, 64), (128, 96)):
        heatmaps = model(torch.randn(2, 3, h, w))
        assert heatmaps.shape == (2, 5, h // 4, w // 4)
    heatmaps.square().mean().backward()
    assert model.backbone.vit.pos_embed.grad.abs().sum() > 0


def test_joint_count_comes_from_the_caller():
    assert build_model(tiny(), num_joints=5)(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)


@pytest.mark.parametrize(
    ("backbone", "params_m", "gmacs"),
    [("resnet50", 34.00, 5.43), ("resnet101", 52.99, 9.06), ("resnet152", 68.64, 12.70)],
)
def test_published_parameter_counts_and_true_multiply_adds(backbone, params_m, gmacs):
    row = summarize(ModelConfig(backbone=backbone), 17, (256, 192))
    assert round(row["params"] / 1e6, 2) == params_m
    assert abs(row["gmacs"] - gmacs) < 0.006
    assert row["heatmap"] == [64, 48]


def test_attention_overhead_is_small_and_counted():
    base = summarize(ModelConfig(), 17, (256, 192))
    holistic = summarize(ModelConfig(attention="holistic"), 17, (256, 192))
    partwise = summarize(ModelConfig(attention="partwise"), 17, (256, 192))
    assert base["params"] < holistic["params"] < partwise["params"] < base["params"] * 1.01
    assert base["gmacs"] < holistic["gmacs"] < partwise["gmacs"] < base["gmacs"] * 1.05
    # holistic adds, per stage, a 3x3 conv 256->1 (+bias) and a 1x1 mean-field kernel
    assert holistic["params"] - base["params"] == 3 * (256 * 9 + 1 + 1)


def test_head_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18"), 17)
    deconvs = [m for m in model.deconv_layers if isinstance(m, nn.ConvTranspose2d)]
    bns = [m for m in model.deconv_layers if isinstance(m, nn.BatchNorm2d)]
    assert len(deconvs) == 3 and all(d.bias is None for d in deconvs)
    for d in deconvs:
        assert abs(d.weight.std().item() - 0.001) < 1e-4
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert abs(model.final_layer.weight.std().item() - 0.001) < 2e-4
    assert torch.all(model.final_layer.bias == 0)


def test_mean_field_attention_follows_the_equations():
    torch.manual_seed(0)
    att = MeanFieldAttention(8, maps=2, kernel=3, steps=3)
    for p in att.parameters():
        nn.init.normal_(p, std=0.3)
    f = torch.randn(2, 8, 10, 7)
    u = F.conv2d(f, att.unary.weight, att.unary.bias, padding=1)

    def pairwise(s):
        return F.conv2d(s, att.pairwise.weight, padding=1, groups=2)

    s = torch.sigmoid(pairwise(u) + u)
    s = torch.sigmoid(pairwise(s) + u)
    s = torch.sigmoid(pairwise(s) + u)
    torch.testing.assert_close(att(f), s)


def test_part_attention_equals_per_joint_feature_products():
    torch.manual_seed(0)
    parts = PartAttention(6, joints=3, kernel=1, steps=2)
    final = nn.Conv2d(6, 3, 1)
    f = torch.randn(2, 6, 5, 4)
    heatmaps, maps = parts(f, final)
    naive = torch.stack(
        [
            F.conv2d(f * maps[:, k : k + 1], final.weight[k : k + 1], final.bias[k : k + 1])[:, 0]
            for k in range(3)
        ],
        dim=1,
    )
    torch.testing.assert_close(heatmaps, naive)


def test_holistic_map_is_the_sum_of_each_stage_map_upsampled():
    torch.manual_seed(0)
    model = build_model(tiny(attention="holistic"), 17).eval()
    for p in model.holistic.parameters():
        nn.init.normal_(p, std=0.5)
    captured = []
    hooks = [
        model.deconv_layers[i].register_forward_hook(lambda m, i, o: captured.append(o))
        for i in (2, 5, 8)
    ]
    _, maps = model(torch.randn(1, 3, 64, 64), return_attention=True)
    for h in hooks:
        h.remove()
    expected = torch.zeros_like(maps["holistic"])
    for i, (stage, feats) in enumerate(zip(model.holistic.stages, captured), start=1):
        own = stage(feats)
        torch.testing.assert_close(maps[f"stage{i}"], own)
        expected += F.interpolate(own, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps["holistic"], expected)


def test_channels_last_and_bf16_autocast_on_cpu_match_fp32():
    torch.manual_seed(0)
    model = build_model(tiny(attention="partwise"), 17).eval()
    for p in model.parameters():  # heatmaps of a visible size, not the 1e-4 of the init
        if p.dim() > 1:
            nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ref = model(x)
        last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    scale = ref.abs().max()
    assert torch.isfinite(last).all() and torch.isfinite(low).all()
    assert (last - ref).abs().max() / scale < 1e-4
    assert (low.float() - ref).norm() / ref.norm() < 0.05  # bf16 keeps ~3 significant digits


def _pretrained(cfg: ModelConfig) -> nn.Module:
    """A model as a fresh training gets it: built, then its backbone's pretrained weights."""
    model = build_model(cfg, 17)
    load_pretrained(model, cfg.pretrained)
    return model


def test_imagenet_backbone_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)  # torchvision's naming, classifier included
    cfg = load_config(None, ["model.backbone=resnet18", f"model.pretrained={path}"]).model
    model = _pretrained(cfg)
    torch.testing.assert_close(
        model.backbone.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight
    )
    torch.testing.assert_close(model.backbone.bn1.running_mean, imagenet.bn1.running_mean)
    torch.manual_seed(5)  # build_model alone leaves them: inference loads a checkpoint instead
    untouched = build_model(cfg, 17).backbone.layer3[1].conv2.weight
    assert not torch.equal(untouched, imagenet.layer3[1].conv2.weight)


def test_a_trained_pose_models_backbone_loads_and_its_head_starts_fresh(tmp_path):
    torch.manual_seed(2)
    trained = build_model(ModelConfig(backbone="resnet18", attention="holistic"), 17)
    path = tmp_path / "model_states.pt"
    torch.save({"module": trained.state_dict(), "step": 7}, path)  # a checkpoint's layout
    torch.manual_seed(3)
    cfg = ModelConfig(backbone="resnet18", attention="partwise", pretrained=str(path))
    model = _pretrained(cfg)
    torch.testing.assert_close(
        model.backbone.layer4[1].conv2.weight, trained.backbone.layer4[1].conv2.weight
    )
    torch.testing.assert_close(model.backbone.bn1.running_var, trained.backbone.bn1.running_var)
    torch.manual_seed(3)
    fresh = build_model(ModelConfig(backbone="resnet18", attention="partwise"), 17)
    torch.testing.assert_close(model.final_layer.weight, fresh.final_layer.weight)
    assert not torch.equal(model.final_layer.weight, trained.final_layer.weight)


def test_backbone_weight_errors_name_the_problem(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"wrong shape: .*layer1\.0\.conv1\.weight"):
        _pretrained(ModelConfig(backbone="resnet50", pretrained=str(path)))
    with pytest.raises(WeightsError, match="does not exist"):
        _pretrained(ModelConfig(pretrained=str(tmp_path / "none.pth")))
    with pytest.raises(ConfigError, match=r"model\.pretrained"):
        load_config(None, [f"model.pretrained={tmp_path / 'none.pth'}"])
    torch.save({"not": "tensors"}, tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="state dict of tensors"):
        _pretrained(ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "junk.pth")))
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pth")  # needs full unpickling
    with pytest.raises(WeightsError, match="could not be read"):
        _pretrained(
            ModelConfig(backbone="resnet18", pretrained=str(tmp_path / "pickled_module.pth"))
        )


def test_reference_pose_resnet_checkpoint_loads_into_the_plain_model(tmp_path):
    torch.manual_seed(2)
    source = build_model(ModelConfig(backbone="resnet18"), 17).eval()
    for p in source.parameters():
        nn.init.normal_(p, std=0.05)
    # The reference saves `conv1.weight`, `layer1...`, `deconv_layers.0.weight`,
    # `final_layer.weight`, often under DataParallel's `module.` prefix.
    reference = {f"module.{k.removeprefix('backbone.')}": v for k, v in source.state_dict().items()}
    assert "module.conv1.weight" in reference and "module.deconv_layers.3.weight" in reference
    path = tmp_path / "pose_resnet_18_256x192.pth"
    torch.save(reference, path)
    target = build_model(ModelConfig(backbone="resnet18"), 17).eval()
    load_model_weights(target, path)
    x = torch.randn(1, 3, 128, 96)
    torch.testing.assert_close(target(x), source(x))
    del reference["module.final_layer.bias"]
    with pytest.raises(WeightsError, match=r"missing: final_layer\.bias"):
        load_model_weights(target, {k.removeprefix("module."): v for k, v in reference.items()})


def test_summary_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert (
        summary_main(
            ["--sizes", "256x192", "384x288", "--json", str(out), "model.attention=partwise"]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["input"] == [256, 192] and len(data["sizes"]) == 2
    assert 34.0e6 < data["params"] < 34.1e6 and 5.4 < data["gmacs"] < 5.7
    assert "true multiply-adds" in capsys.readouterr().out


def _timm_classifier(arch: str, path):
    """A timm classifier's weights in timm's own format (what timm publishes), as a file."""
    from safetensors.torch import save_file

    torch.manual_seed(4)
    classifier = timm.create_model(arch)
    for p in classifier.parameters():  # no two tensors alike, so a mix-up shows
        nn.init.normal_(p, std=0.02)
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, path)
    return state


def test_timm_vit_weights_load_as_vitpose_starts_from_them(tmp_path):
    """A ViT-S/16 at 224 (class token, 14x14 position grid, 1000-way head) into vitpose_s:
    blocks as they are, class token and head dropped (and said), the grid resampled to 16 x 12
    as ViTPose does: bicubic, corners not aligned, no antialiasing."""
    path = tmp_path / "vit_small.safetensors"
    state = _timm_classifier("vit_small_patch16_224", path)
    cfg = load_config(
        None, ["model.backbone=vitpose_s", "model.deconv_layers=2", f"model.pretrained={path}"]
    ).model
    model = build_model(cfg, 17)
    loaded = load_pretrained(model, cfg.pretrained)
    assert loaded.dropped == ["cls_token", "head.bias", "head.weight"]
    assert "left out 3: cls_token, head.bias, head.weight" in loaded.describe()
    vit = model.backbone.vit
    torch.testing.assert_close(vit.blocks[7].mlp.fc2.weight, state["blocks.7.mlp.fc2.weight"])
    torch.testing.assert_close(vit.patch_embed.proj.weight, state["patch_embed.proj.weight"])
    torch.testing.assert_close(vit.norm.bias, state["norm.bias"])
    grid = state["pos_embed"][:, 1:]  # the class token's embedding dropped
    assert vit.pos_embed.shape == (1, 16 * 12, 384)
    square = grid.reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=(16, 12), mode="bicubic", align_corners=False)
    expected = resized.permute(0, 2, 3, 1).reshape(1, 16 * 12, 384)
    torch.testing.assert_close(vit.pos_embed, expected)
    # the patch under the image's top-left corner keeps the corner's embedding, near enough
    assert torch.nn.functional.cosine_similarity(vit.pos_embed[0, 0], grid[0, 0], dim=0) > 0.9


def test_timm_hrnet_weights_load_without_the_classification_head(tmp_path):
    path = tmp_path / "hrnet_w32.safetensors"
    state = _timm_classifier("hrnet_w32", path)
    cfg = ModelConfig(backbone="hrnet_w32", deconv_layers=0, pretrained=str(path))
    hrnet = _pretrained(cfg).backbone.hrnet
    own = hrnet.state_dict()
    assert any(k.startswith("incre_modules.") for k in state)
    for key in ("conv1.weight", "stage4.2.fuse_layers.0.1.0.weight", "layer1.0.bn3.running_var"):
        torch.testing.assert_close(own[key], state[key])
    loaded = [k for k in own if k in state and torch.equal(own[k], state[k])]
    assert len(loaded) == len(own)  # every weight of the backbone came from the file


def test_timm_weights_by_name_come_from_the_hub_cache(tmp_path, monkeypatch):
    """timm:NAME resolves through timm and the Hugging Face hub's cache, offline here: a cached
    file loads, and a missing one is an error naming the two ways out. By name, the number of
    attention heads is checked too: timm's ViT-S (6 heads) does not fit ViTPose-S (12), though
    every shape agrees."""
    import huggingface_hub.constants as hub

    def cache(name: str, architecture: str) -> dict:
        revision = "0" * 40
        repo = tmp_path / "hub" / f"models--timm--{name}"
        (repo / "snapshots" / revision).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        return _timm_classifier(architecture, repo / "snapshots" / revision / "model.safetensors")

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    base = "vit_base_patch16_224.augreg_in21k_ft_in1k"
    state = cache(base, "vit_base_patch16_224")
    cfg = load_config(
        None, ["model.backbone=vitpose_b", "model.deconv_layers=2", f"model.pretrained=timm:{base}"]
    ).model
    vit = _pretrained(cfg).backbone.vit
    torch.testing.assert_close(vit.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    name = "vit_small_patch16_224.augreg_in21k_ft_in1k"
    cache(name, "vit_small_patch16_224")
    cfg = ModelConfig(backbone="vitpose_s", deconv_layers=2, pretrained=f"timm:{name}")
    with pytest.raises(WeightsError, match=r"has 6 attention heads, this ViT 12"):
        _pretrained(cfg)

    uncached = "vit_small_patch16_224.augreg_in1k"
    cfg = ModelConfig(backbone="vitpose_s", deconv_layers=2, pretrained=f"timm:{uncached}")
    with pytest.raises(WeightsError) as error:
        _pretrained(cfg)
    message = str(error.value)
    assert f"timm/{uncached}" in message and "online" in message and "local file" in message

    cfg = ModelConfig(backbone="vitpose_b", deconv_layers=2, pretrained=f"timm:{name}")
    with pytest.raises(WeightsError, match=r"wrong shape: vit\.blocks\.0"):
        _pretrained(cfg)  # ViT-S weights into ViT-B
    with pytest.raises(ConfigError, match=r"model\.pretrained.*no weights 'vit_small_patch16_9'"):
        load_config(None, ["model.pretrained=timm:vit_small_patch16_9"])


def test_fetch_weights_fills_the_cache_a_run_reads_and_is_one_line_offline(
    tmp_path, monkeypatch, capsys
):
    """`posescale-fetch-weights timm:NAME` downloads through the hub (here a stand-in that fails
    as offline, then one that writes the file where the hub's cache keeps it); a run then finds
    the weights without the network."""
    import huggingface_hub
    import huggingface_hub.constants as hub

    from launch.fetch_weights import main as fetch_main
    from pose.models.weights import cached_timm_file, timm_weights

    name = "vit_small_patch16_224.augreg_in1k"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def offline(repo_id, filename):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match=r"not in the local cache.*posescale-fetch-weights"):
        timm_weights(name)
    assert fetch_main([f"timm:{name}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be downloaded" in err and "online" in err

    def download(repo_id, filename):
        revision = "1" * 40
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        (repo / "snapshots" / revision).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(revision)
        path = repo / "snapshots" / revision / filename
        _timm_classifier("vit_small_patch16_224", path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert fetch_main([f"timm:{name}"]) == 0
    assert cached_timm_file(name).name == "model.safetensors"
    assert "blocks.0.attn.qkv.weight" in timm_weights(name)
