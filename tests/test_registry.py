"""Registries and plugins: the built-ins register through the same decorators a plugin uses, a plugin's
fusion head, perturbation and dataset loader work wherever a built-in does, unknown names and bad
registrations are refused in one line, and installed entry points load by themselves."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from study import registry
from study.config import SpaceError, load_space
from study.data import LOADERS, load_dataset, register_dataset
from study.data.physionet import load_physionet2016
from study.models import FUSIONS, ConcatFusionHead, ModelConfig, create_model, register_model
from study.perturbations import (
    PERTURBATIONS,
    apply_perturbation,
    describe,
    parse_perturbation_suite,
    register_perturbation,
    severity_levels,
    tempo_rate,
)
from study.registry import PluginError, load_plugins
from study.train import ablation_hook

TINY = {"img_size": 32, "patch_size": 8, "vit_dim": 16, "vit_depth": 1, "vit_heads": 2, "spec_dense": 8}
TINY |= {"wave_filters": (4, 8), "wave_dense": 8, "fusion_dim": 8}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_built_ins_are_registered_by_the_decorators():
    assert FUSIONS["concat"] is ConcatFusionHead
    assert LOADERS["physionet2016"] is load_physionet2016
    assert {"concat", "sum", "cross_attention", "film", "logit_ensemble"} <= set(FUSIONS)
    assert {"physionet2016", "pascal", "icbhi2017", "manifest"} <= set(LOADERS)
    assert severity_levels("codec") == [1, 2, 3, 4]


def test_unknown_names_are_refused_in_one_line_listing_what_is_registered(tmp_path):
    with pytest.raises(ValueError) as error:
        ModelConfig(fusion="gated")
    assert "fusion must be one of [" in _one_line(error) and "'concat'" in str(error.value)
    assert "--plugin MODULE" in str(error.value)
    with pytest.raises(ValueError) as error:
        load_dataset("hospital", tmp_path)
    assert "dataset must be one of [" in _one_line(error) and "'physionet2016'" in str(error.value)
    with pytest.raises(ValueError) as error:
        parse_perturbation_suite([{"name": "reverb"}])
    assert "'name' must be one of [" in _one_line(error) and "'codec'" in str(error.value)
    with pytest.raises(SpaceError) as error:
        load_space("smoke").trial_configs({"model.fusion": "gated"})
    assert "fusion must be one of" in _one_line(error)


def test_a_plugins_fusion_head_perturbation_and_loader_work_like_the_built_ins(example_plugin, tmp_path):
    assert "gated_sum" not in FUSIONS
    load_plugins([example_plugin])
    assert {"gated_sum"} <= set(FUSIONS) and "clipping" in PERTURBATIONS and "folders" in LOADERS

    torch.manual_seed(0)
    model = create_model({"architecture": "fusion", "fusion": "gated_sum", **TINY}).eval()
    spec, wave = torch.rand(3, 1, 32, 32), torch.randn(3, 1, 400)
    features = model.forward_features(spec, wave)
    assert model.forward_head(features).shape == (3,)
    assert model.branch_feature_keys == {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}
    means = {k: v.mean(0) for k, v in features.items()}
    ablated = ablation_hook(model, "waveform", "zeros", means)(features)
    assert torch.equal(ablated["waveform"], torch.zeros_like(features["waveform"]))
    assert not torch.equal(model.forward_head(ablated), model.forward_head(features))

    assert severity_levels("clipping") == [1, 2, 3, 4, 5]  # its own scale, not 1-4
    assert [item.severity for item in parse_perturbation_suite([{"name": "clipping"}])] == [1, 2, 3, 4, 5]
    assert describe("clipping", 5) == "clipped at 10%" and describe("clipping", 0) == "original"
    assert tempo_rate("clipping", 5) == 1.0
    x = np.sin(np.linspace(0, 20, 2000)).astype(np.float32)
    assert np.abs(apply_perturbation("clipping", x, 2000, 5)).max() == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(ValueError, match=r"severity of clipping must be 0 or one of its levels \[1, 2, 3, 4, 5\]"):
        apply_perturbation("clipping", x, 2000, 6)

    for folder in ("normal", "abnormal"):
        (tmp_path / "clinic" / folder).mkdir(parents=True)
        for index in range(2):
            sf.write(tmp_path / "clinic" / folder / f"{folder}{index}.wav", x * (index + 1) / 3, 2000)
    loaded = load_dataset("folders", tmp_path / "clinic")
    assert sorted(loaded.table["label"]) == [0, 0, 1, 1] and set(loaded.table["split"]) == {"test"}
    assert loaded.table["dataset"].eq("folders").all()


def test_bad_registrations_are_refused_in_one_line(example_plugin):
    with pytest.raises(PluginError, match="lowercase letters"):
        register_model("Gated Sum", kind="fusion")(ConcatFusionHead)
    with pytest.raises(PluginError, match=r"'concat' is registered already \(by study.models.ConcatFusionHead\)"):

        @register_model("concat", kind="fusion")
        class Other(ConcatFusionHead):
            pass

    with pytest.raises(TypeError, match="input_keys must map 'spectrogram' and 'waveform'"):

        @register_model("half", kind="fusion")
        class Half(torch.nn.Module):
            input_keys = {"spectrogram": ("spectrogram",)}

    with pytest.raises(TypeError, match="a keyword skip_bad"):

        @register_dataset("clinic")
        def load_clinic(root):
            return None

    with pytest.raises(PluginError, match=r"must take \(x, sr, severity, ...\)"):
        register_perturbation("gain", severities=(1, 2))(lambda wave, rate, level: wave)
    with pytest.raises(PluginError, match="positive integer levels"):
        register_perturbation("gain", severities={0: 1.0})
    with pytest.raises(PluginError) as error:
        load_plugins(["no_such_plugin_module"])
    assert "--plugin no_such_plugin_module: cannot import it" in _one_line(error)


def test_an_installed_entry_point_is_loaded_by_the_first_lookup(tmp_path, monkeypatch, example_plugin):
    """A package's `audiofuse.plugins` entry point, as pip installs it (a dist-info folder on sys.path)."""
    (tmp_path / "ep_plugin.py").write_text(
        "from study.perturbations import register_perturbation\n\n"
        "@register_perturbation('silence', severities=(1,))\n"
        "def silence(x, sr, severity):\n"
        "    return (x * (severity == 0)).astype('float32')\n"
    )
    info = tmp_path / "ep_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[audiofuse.plugins]\nsilence = ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        assert "silence" in PERTURBATIONS
        assert describe("silence", 1) == "silence 1"
    finally:
        sys.modules.pop("ep_plugin", None)
    (info / "entry_points.txt").write_text("[audiofuse.plugins]\nbroken = ep_plugin_missing\n")
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    with pytest.raises(PluginError) as error:
        "silence" in PERTURBATIONS  # noqa: B015 - the lookup is what is tested
    assert "entry point 'broken' (ep_plugin_missing) failed to load" in _one_line(error)
