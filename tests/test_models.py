from __future__ import annotations

import math

import pytest
import torch

from study.models import (
    AST_BASE,
    FUSIONS,
    AudioClassifier,
    ModelConfig,
    OverlappingPatchEmbed,
    count_parameters,
    create_model,
    load_ast_checkpoint,
)

torch.set_num_threads(1)

TINY = dict(
    img_size=32,
    patch_size=8,
    vit_dim=16,
    vit_depth=1,
    vit_heads=2,
    vit_mlp_ratio=2.0,
    spec_dense=16,
    wave_filters=(4, 8, 8),
    wave_dense=8,
    fusion_dim=16,
    fusion_heads=2,
)
BATCH, WAVE_LENGTH = 3, 2000
VARIANTS = [("spectrogram", "concat"), ("waveform", "concat")] + [("fusion", fusion) for fusion in FUSIONS]


def tiny(architecture: str, fusion: str = "concat", **overrides) -> AudioClassifier:
    return create_model({**TINY, "architecture": architecture, "fusion": fusion, **overrides})


def inputs(seed: int = 0, batch: int = BATCH, img: tuple[int, int] = (32, 32)):
    generator = torch.Generator().manual_seed(seed)
    spec = torch.rand(batch, 1, *img, generator=generator)
    wave = torch.randn(batch, 1, WAVE_LENGTH, generator=generator)
    return spec, wave


def call_inputs(model: AudioClassifier, spec, wave):
    """The inputs a model of this architecture takes; the unused one is None."""
    return (spec if model.spectrogram_branch is not None else None, wave if model.waveform_branch is not None else None)


@pytest.mark.parametrize("architecture,fusion", VARIANTS)
@pytest.mark.parametrize("num_classes", [1, 3])
def test_shapes_and_finite_gradients(architecture, fusion, num_classes):
    torch.manual_seed(0)
    model = tiny(architecture, fusion, num_classes=num_classes)
    spec, wave = call_inputs(model, *inputs())
    logits = model(spec, wave)
    assert logits.shape == ((BATCH,) if num_classes == 1 else (BATCH, num_classes))
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), name
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


@pytest.mark.parametrize("architecture,fusion", VARIANTS)
def test_forward_equals_head_of_features(architecture, fusion):
    torch.manual_seed(0)
    model = tiny(architecture, fusion).eval()
    spec, wave = call_inputs(model, *inputs())
    with torch.no_grad():
        features = model.forward_features(spec, wave)
        torch.testing.assert_close(model(spec, wave), model.forward_head(features), rtol=0, atol=0)


def test_feature_shapes():
    model = tiny("fusion").eval()
    features = model.forward_features(*inputs())
    # 32 / 8 = 4 x 4 patches; 'same' padding: 2000 -> 500 -> 125 -> 32 steps
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "spectrogram": (BATCH, 16),
        "spectrogram_tokens": (BATCH, 16, 16),
        "waveform": (BATCH, 8),
        "waveform_steps": (BATCH, 32, 8),
    }
    valid = tiny("waveform", wave_padding="valid").eval()
    # 'valid': (2000 - 16) // 4 + 1 = 497 -> 121 -> 27
    assert valid.forward_features(wave=inputs()[1])["waveform_steps"].shape == (BATCH, 27, 8)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_replacing_a_branch_changes_fusion_output(fusion):
    torch.manual_seed(0)
    model = tiny("fusion", fusion).eval()
    with torch.no_grad():
        features = model.forward_features(*inputs())
        reference = model.forward_head(features)
        for branch, keys in model.branch_feature_keys.items():
            ablated = dict(features)
            for key in keys:
                ablated[key] = torch.zeros_like(features[key])
            changed = model.forward_head(ablated)
            assert (changed - reference).abs().max() > 1e-4, f"{fusion}: ablating {branch} changed nothing"
            # the mean over the batch keeps the other branch's per-example information
            mean_ablated = dict(features)
            for key in keys:
                mean_ablated[key] = features[key].mean(dim=0, keepdim=True).expand_as(features[key])
            assert model.forward_head(mean_ablated).std() > 0


def test_branch_feature_keys_name_the_inputs_of_each_head():
    assert tiny("fusion", "concat").branch_feature_keys == {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}
    assert tiny("fusion", "cross_attention").branch_feature_keys == {
        "spectrogram": ("spectrogram_tokens",),
        "waveform": ("waveform_steps",),
    }
    assert tiny("waveform").branch_feature_keys == {"waveform": ("waveform",)}


def test_logit_ensemble_is_the_mean_of_single_branch_logits():
    model = tiny("fusion", "logit_ensemble").eval()
    with torch.no_grad():
        features = model.forward_features(*inputs())
        spec_logit = model.head.spectrogram_head(features).squeeze(-1)
        wave_logit = model.head.waveform_head(features).squeeze(-1)
        torch.testing.assert_close(model.forward_head(features), (spec_logit + wave_logit) / 2)


def test_film_gate_closed_leaves_spectrogram_features_unmodulated():
    model = tiny("fusion", "film").eval()
    with torch.no_grad():
        features = model.forward_features(*inputs())
        model.head.film.weight.zero_()
        model.head.film.bias.zero_()
        model.head.film.bias[:16] = -1e4  # gate = sigmoid(-1e4) = 0
        expected = model.head.classifier(features["spectrogram"]).squeeze(-1)
        torch.testing.assert_close(model.forward_head(features), expected)


def test_paper_parameter_counts():
    # ViT: patch conv 16*16*192+192 = 49,344; positions 196*192 = 37,632; per block
    # 2 LayerNorms 768 + qkv 111,168 + proj 37,056 + MLP 74,112 + 73,920 = 297,024 (x6);
    # final LayerNorm 384 -> 1,869,504; Dense(192) 37,056 -> 1,906,560.
    # CNN: convs 1,088 + 131,200 + 524,544, BatchNorms 128 + 256 + 512 -> 657,728; Dense(64) 16,448.
    # Concat head: Dense(256 -> 192) 49,344 + Dense(192 -> 1) 193.
    counts = count_parameters(create_model({"architecture": "fusion", "fusion": "concat"}))
    assert counts == {"spectrogram": 1_906_560, "waveform": 674_176, "head": 49_537, "total": 2_630_273}
    assert count_parameters(create_model({"architecture": "spectrogram"})) == {
        "spectrogram": 1_906_560,
        "head": 193,
        "total": 1_906_753,
    }
    assert count_parameters(create_model({"architecture": "waveform"})) == {
        "waveform": 674_176,
        "head": 65,
        "total": 674_241,
    }


def test_cross_attention_branches_have_no_dense_layer():
    model = tiny("fusion", "cross_attention")
    assert model.spectrogram_branch.projection is None and model.waveform_branch.projection is None
    features = model.forward_features(*inputs())
    assert features["spectrogram"].shape == (BATCH, 16) and features["waveform"].shape == (BATCH, 8)


def test_same_seed_same_init_and_different_seed_different_init():
    def state(seed):
        torch.manual_seed(seed)
        return tiny("fusion", "cross_attention").state_dict()

    first, again, other = state(1), state(1), state(2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(
        first["spectrogram_branch.encoder.vit.pos_embed"], other["spectrogram_branch.encoder.vit.pos_embed"]
    )
    assert not torch.equal(first["waveform_branch.blocks.0.conv.weight"], other["waveform_branch.blocks.0.conv.weight"])


def test_keras_style_initialisation():
    model = tiny("fusion")
    conv = model.waveform_branch.blocks[0].conv
    bound = math.sqrt(6.0 / (conv.in_channels * 16 + conv.out_channels * 16))  # Glorot uniform
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.5 * bound
    assert torch.count_nonzero(conv.bias) == 0
    assert model.waveform_branch.blocks[0].norm.momentum == pytest.approx(0.01)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"architecture": "transformer"}, "architecture"),
        ({"fusion": "gated"}, "fusion"),
        ({"vit_dim": 190}, "vit_heads"),
        ({"vit_depth": 0}, "vit_depth"),
        ({"vit_depth": True}, "vit_depth"),
        ({"dropout": 1.0}, "dropout"),
        ({"wave_filters": ()}, "wave_filters"),
        ({"wave_filters": (64, -1)}, r"wave_filters\[1\]"),
        ({"img_size": (224, 0)}, "img_size"),
        ({"patch_size": 300}, "patch_size"),
        ({"fusion": "cross_attention", "fusion_dim": 10, "fusion_heads": 4}, "fusion_heads"),
        ({"vit_pool": "token"}, "class_token"),
        ({"dist_token": True}, "class_token"),
        ({"branch_activation": "tanh"}, "branch_activation"),
        ({"wave_padding": "causal"}, "wave_padding"),
        ({"vit_sizes": 3}, "vit_sizes"),
        ({"architecture": "waveform", "branch_heads": True}, "branch_heads"),
    ],
)
def test_config_validation_names_the_bad_key(values, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(values)


def test_config_round_trip_and_type_errors():
    config = ModelConfig.from_dict({**TINY, "wave_filters": [4, 8, 8], "img_size": [32, 48]})
    assert config.wave_filters == (4, 8, 8) and config.img_size == (32, 48)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TypeError, match="class_token"):
        ModelConfig(class_token="yes")
    with pytest.raises(TypeError, match="config"):
        create_model([("architecture", "fusion")])


def test_input_validation():
    model = tiny("fusion")
    spec, wave = inputs()
    with pytest.raises(TypeError, match="wave"):
        model(spec, None)
    with pytest.raises(ValueError, match="spec must have shape"):
        model(spec[:, :, :16], wave)
    with pytest.raises(ValueError, match="wave must have shape"):
        model(spec, wave[:, 0])
    with pytest.raises(ValueError, match="batch sizes"):
        model(spec, wave[:2])
    with pytest.raises(ValueError, match="at least"):
        tiny("waveform", wave_padding="valid")(None, wave[..., :50])


def test_overlapping_patch_grid_matches_ast():
    # AST: 16 x 16 patches every 10 pixels; 128 x 1024 -> 12 x 101, 128 x 798 -> 12 x 79
    embed = OverlappingPatchEmbed(img_size=(128, 1024), patch_size=16, stride=10, in_chans=1, embed_dim=4)
    assert embed.grid_size == (12, 101) and embed.num_patches == 1212
    assert embed(torch.zeros(1, 1, 128, 1024)).shape == (1, 1212, 4)
    config = {**AST_BASE, "vit_dim": 16, "vit_depth": 1, "vit_heads": 2}
    model = create_model(config)
    assert model.spectrogram_branch.encoder.grid_size == (12, 79)
    assert model.spectrogram_branch.encoder.vit.pos_embed.shape == (1, 2 + 12 * 79, 16)


def test_ast_forward_pools_class_and_distillation_tokens():
    torch.manual_seed(0)
    model = create_model({**AST_BASE, "img_size": (32, 60), "vit_dim": 16, "vit_depth": 1, "vit_heads": 2}).eval()
    spec = torch.randn(2, 1, 32, 60)
    logits = model(spec)
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    logits.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        tokens = model.spectrogram_branch.encoder.vit.forward_features(spec)
        features = model.forward_features(spec)
    torch.testing.assert_close(features["spectrogram"], (tokens[:, 0] + tokens[:, 1]) / 2)
    assert features["spectrogram_tokens"].shape == (2, 2 * 5, 16)  # (32-16)//10+1 x (60-16)//10+1


def fake_ast_checkpoint(path, dim=16, depth=2, grid=(12, 101), with_module_prefix=True):
    """A random state dict with the key layout of YuanGongND/ast's audioset_10_10_0.4593.pth."""
    generator = torch.Generator().manual_seed(7)
    prefix = "module." if with_module_prefix else ""
    state = {
        f"{prefix}v.cls_token": torch.randn(1, 1, dim, generator=generator),
        f"{prefix}v.dist_token": torch.randn(1, 1, dim, generator=generator),
        f"{prefix}v.pos_embed": torch.randn(1, 2 + grid[0] * grid[1], dim, generator=generator),
        f"{prefix}v.patch_embed.proj.weight": torch.randn(dim, 1, 16, 16, generator=generator),
        f"{prefix}v.patch_embed.proj.bias": torch.randn(dim, generator=generator),
        f"{prefix}v.norm.weight": torch.randn(dim, generator=generator),
        f"{prefix}v.norm.bias": torch.randn(dim, generator=generator),
        f"{prefix}v.head.weight": torch.randn(1000, dim, generator=generator),
        f"{prefix}v.head.bias": torch.randn(1000, generator=generator),
        f"{prefix}v.head_dist.weight": torch.randn(1000, dim, generator=generator),
        f"{prefix}v.head_dist.bias": torch.randn(1000, generator=generator),
        f"{prefix}mlp_head.0.weight": torch.randn(dim, generator=generator),
        f"{prefix}mlp_head.0.bias": torch.randn(dim, generator=generator),
        f"{prefix}mlp_head.1.weight": torch.randn(527, dim, generator=generator),
        f"{prefix}mlp_head.1.bias": torch.randn(527, generator=generator),
    }
    shapes = {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (4 * dim, dim),
        "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim),
        "mlp.fc2.bias": (dim,),
    }
    for block in range(depth):
        for name, shape in shapes.items():
            state[f"{prefix}v.blocks.{block}.{name}"] = torch.randn(*shape, generator=generator)
    torch.save(state, path)
    return state


def small_ast(img_size=(128, 1024), **overrides):
    return create_model(
        {**AST_BASE, "img_size": img_size, "vit_dim": 16, "vit_depth": 2, "vit_heads": 2, "num_classes": 2, **overrides}
    )


def test_load_ast_checkpoint_maps_every_backbone_key(tmp_path):
    path = tmp_path / "ast.pth"
    state = fake_ast_checkpoint(path)
    torch.save({**state, "module.v.extra_token": torch.zeros(3)}, path)
    model = small_ast()
    report = load_ast_checkpoint(model, path)
    vit = model.spectrogram_branch.encoder.vit
    assert torch.equal(vit.cls_token, state["module.v.cls_token"])
    assert torch.equal(vit.reg_token, state["module.v.dist_token"])
    assert torch.equal(vit.blocks[1].attn.qkv.weight, state["module.v.blocks.1.attn.qkv.weight"])
    assert torch.equal(vit.patch_embed.proj.weight, state["module.v.patch_embed.proj.weight"])
    assert torch.equal(vit.pos_embed, state["module.v.pos_embed"])  # same 12 x 101 grid: copied as is
    backbone = {k for k in model.state_dict() if k.startswith("spectrogram_branch.")}
    assert set(report.loaded) == backbone
    assert report.missing == (
        "head.classifier.0.bias",
        "head.classifier.0.weight",
        "head.classifier.2.bias",
        "head.classifier.2.weight",
    )
    assert report.unexpected == ("module.v.extra_token",)
    assert set(report.skipped) == {k for k in state if ".head" in k or "mlp_head" in k}
    assert report.resized == {}


def test_load_ast_checkpoint_interpolates_position_embeddings(tmp_path):
    path = tmp_path / "ast.pth"
    state = fake_ast_checkpoint(path, with_module_prefix=False)
    constant = torch.randn(1, 1, 16)
    pos_embed = state["v.pos_embed"].clone()
    pos_embed[:, 2:] = constant  # a constant field must stay constant under interpolation
    torch.save({**state, "v.pos_embed": pos_embed}, path)
    model = small_ast(img_size=(128, 798))
    report = load_ast_checkpoint(model, path)
    loaded = model.spectrogram_branch.encoder.vit.pos_embed
    assert report.resized == {"v.pos_embed": ((1, 1214, 16), (1, 2 + 12 * 79, 16))}
    torch.testing.assert_close(loaded[:, :2], pos_embed[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(loaded[:, 2:], constant.expand(1, 12 * 79, 16), rtol=1e-5, atol=1e-5)


def test_load_ast_checkpoint_refuses_silent_adaptation(tmp_path):
    path = tmp_path / "ast.pth"
    fake_ast_checkpoint(path)
    with pytest.raises(ValueError, match="prefix token"):
        load_ast_checkpoint(small_ast(dist_token=False), path)
    with pytest.raises(ValueError, match="cls_token has shape"):
        load_ast_checkpoint(small_ast(vit_dim=32), path)
    with pytest.raises(ValueError, match="source_grid"):
        load_ast_checkpoint(small_ast(), path, source_grid=(12, 100))
    with pytest.raises(TypeError, match="spectrogram branch"):
        load_ast_checkpoint(tiny("waveform"), path)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_branch_heads_train_each_branch_and_leave_the_model_unchanged(fusion):
    torch.manual_seed(0)
    plain = tiny("fusion", fusion).eval()
    torch.manual_seed(0)
    with_heads = tiny("fusion", fusion, branch_heads=True).eval()
    # built after every other layer: the shared weights start the same, and predictions ignore the heads
    shared = plain.state_dict()
    assert {
        k: v for k, v in with_heads.state_dict().items() if not k.startswith("branch_heads.")
    }.keys() == shared.keys()
    assert all(torch.equal(with_heads.state_dict()[k], v) for k, v in shared.items())
    spec, wave = inputs()
    assert torch.equal(with_heads(spec, wave), plain(spec, wave))
    assert list(with_heads.branch_feature_keys) == list(plain.branch_feature_keys)
    logits, branch_logits = with_heads.forward_train(spec, wave)
    assert torch.equal(logits, plain(spec, wave)) and len(branch_logits) == 2
    assert all(b.shape == logits.shape for b in branch_logits)
    assert plain.forward_train(spec, wave)[1] == []
    # each branch head's loss reaches its own branch only
    spec_logits, wave_logits = branch_logits
    spec_logits.sum().backward()
    assert with_heads.spectrogram_branch.encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert with_heads.waveform_branch.blocks[0].conv.weight.grad is None
