"""The respiratory study: AST fbank input, official ICBHI split, recipes, initial checkpoint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from study.config import SpaceError, load_space
from study.data import load_dataset
from study.data.synth import write_synthetic
from study.features import compute_features, fbank_images, get_profile
from study.models import AST_BASE, create_model
from study.tensors import SplitData
from study.train import train_and_evaluate
from study.trial_data import combine_datasets, prepare_data, split_check, standardize_spectrograms


def test_ast_profile_shape_follows_kaldi_framing():
    profile = get_profile("ast")
    assert (profile.sample_rate, profile.window_s, profile.padding) == (16000, 8.0, "cyclic")
    assert profile.image_size == (128, 798) == AST_BASE["img_size"]  # 1 + (128000 - 400) // 160
    assert get_profile("ast", window_s=4.0).image_size == (128, 398)
    assert get_profile("ast", window_s=10.0, image_size=64).image_size == (128, 998)  # never resized
    with pytest.raises(ValueError, match="win_length"):
        get_profile("ast", win_length=1024)


def _breathing(seconds: float, seed: int = 0) -> np.ndarray:
    """A breathing-like test signal at 16 kHz: noise under a slow envelope plus a 400 Hz wheeze."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (
        0.1
        * (rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t)) + 0.3 * np.sin(2 * np.pi * 400 * t))
    ).astype(np.float32)


def test_fbank_is_asts_kaldi_fbank():
    """The ast profile's image is exactly what AST's data loader computes for a cycle:
    torchaudio.compliance.kaldi.fbank of the mean-removed waveform with AST's settings."""
    import torch
    from torchaudio.compliance import kaldi

    profile = get_profile("ast")
    window = _breathing(8.0)
    waveform = torch.from_numpy(window)[None]
    expected = kaldi.fbank(
        waveform - waveform.mean(),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    ).T.numpy()
    image = fbank_images(window[None], profile)[0]
    assert image.shape == expected.shape == (128, 798)
    np.testing.assert_array_equal(image, expected)
    with pytest.raises(ValueError, match="next power of two"):
        fbank_images(window[None], get_profile("ast", n_fft=1024))


def test_fbank_agrees_with_the_former_librosa_fbank_within_tolerance():
    """The former implementation (librosa: whole-signal pre-emphasis, periodic Hann, Mel triangles
    linear in Hz) against Kaldi's (per-frame DC removal and pre-emphasis, Hann, triangles linear in
    Mel). Stated tolerance, natural-log power: correlation ≥ 0.999 over the image, median |Δ| ≤ 0.01,
    and above the 8 lowest bands (20-150 Hz, narrower than one FFT bin, where the triangles differ
    most) 99th percentile |Δ| ≤ 0.25."""
    import librosa

    profile = get_profile("ast")
    window = _breathing(8.0, seed=1)[None]
    emphasised = librosa.effects.preemphasis(window, coef=profile.preemphasis)
    padded = np.pad(emphasised, ((0, 0), (56, 56)))  # centre the 400-sample window in the 512-point frame
    power = librosa.feature.melspectrogram(
        y=padded,
        sr=16000,
        n_fft=512,
        hop_length=160,
        win_length=400,
        center=False,
        n_mels=128,
        fmin=20.0,
        htk=True,
        norm=None,
    )
    former = np.log(np.maximum(power, np.finfo(np.float32).eps))[0]
    image = fbank_images(window, profile)[0]
    difference = np.abs(image - former)
    assert np.corrcoef(image.ravel(), former.ravel())[0, 1] >= 0.999
    assert np.median(difference) <= 0.01
    assert np.percentile(difference[8:], 99) <= 0.25


def test_short_cycle_is_padded_cyclically_to_eight_seconds():
    cycle = np.sin(np.linspace(0, 60, 16000 * 3)).astype(np.float32)
    images, waves = compute_features(cycle, 16000, get_profile("ast", waveform_norm="none"))
    assert images.shape == (1, 128, 798) and waves.shape == (1, 128000)
    np.testing.assert_array_equal(waves[0], np.resize(cycle, 128000))
    zero = compute_features(cycle, 16000, get_profile("ast", padding="zero", waveform_norm="none"))[1][0]
    assert np.all(zero[48000:] == 0) and np.any(waves[0, 48000:] != 0)


def _split(name, images):
    n = len(images)
    table = pd.DataFrame({"id": [f"{name}{i}" for i in range(n)], "label": np.zeros(n, int)})
    return SplitData(
        name,
        table,
        torch.as_tensor(images, dtype=torch.float16)[:, None],
        torch.zeros(n, 1, 4),
        torch.arange(n),
        torch.zeros(n, dtype=torch.long),
    )


def test_spectrograms_are_standardised_with_training_statistics_only():
    rng = np.random.default_rng(1)
    train_images = rng.normal(-5.0, 3.0, (6, 8, 10))
    test_images = rng.normal(2.0, 1.0, (4, 8, 10))
    train, test = _split("train", train_images), _split("test", test_images)
    train_values = train.images.double().numpy()  # the float16 values the statistics are taken from
    stats = standardize_spectrograms([train, test], train)
    assert stats["mean"] == pytest.approx(train_values.mean()) and stats["std"] == pytest.approx(train_values.std())
    assert float(train.images.float().mean()) == pytest.approx(0.0, abs=1e-2)
    assert float(train.images.float().std()) == pytest.approx(1.0, abs=1e-2)
    expected = (test_images - stats["mean"]) / stats["std"]  # the test set keeps its own offset: ~ +2.3
    np.testing.assert_allclose(test.images[:, 0].float().numpy(), expected, atol=2e-2)


def _cycles(paths_splits_groups):
    return pd.DataFrame(
        [
            {"id": f"{path}_{i}", "path": path, "split": split, "group": group, "audio_hash": f"audio of {path}"}
            for i, (path, split, group) in enumerate(paths_splits_groups)
        ]
    )


def test_split_check_counts_patients_and_refuses_a_shared_recording():
    table = _cycles(
        [
            ("a.wav", "train", "101"),
            ("a.wav", "train", "101"),
            ("b.wav", "val", "102"),
            ("c.wav", "test", "102"),
            ("d.wav", "test", "103"),
        ]
    )
    table.loc[table["path"] == "d.wav", "audio_hash"] = "audio of b.wav"  # another file, the same audio
    assert split_check(table) == {
        "recordings_train": 2,
        "recordings_test": 2,
        "recordings_in_train_and_test": 0,
        "same_audio_in_train_and_test": [["b.wav_2", "d.wav_4"]],
        "patients_train": 2,
        "patients_test": 2,
        "patients_in_train_and_test": ["102"],
    }
    leaking = _cycles([("a.wav", "train", "101"), ("a.wav", "test", "101")])
    with pytest.raises(ValueError, match="1 recording"):
        split_check(leaking)


def test_official_split_of_the_real_recordings_is_honoured(real_root):
    dataset = load_dataset("icbhi2017", real_root / "icbhi2017")
    check = split_check(dataset.table)
    split_file = dict(
        line.split()
        for line in (real_root / "icbhi2017" / "ICBHI_challenge_train_test.txt").read_text().splitlines()
        if line.strip()
    )
    stems = dataset.table.assign(stem=dataset.table["path"].map(lambda p: p.rsplit("/", 1)[-1][:-4]))
    assert (stems["stem"].map(split_file) == stems["split"]).all()
    assert check["recordings_in_train_and_test"] == 0
    assert check["recordings_train"] + check["recordings_test"] == stems["stem"].nunique() == 10
    assert check["patients_in_train_and_test"] == sorted(
        set(stems.loc[stems.split == "train", "group"]) & set(stems.loc[stems.split == "test", "group"])
    )


def test_combining_roots_refuses_shared_patients(tmp_path):
    write_synthetic(tmp_path / "a", seed=0, icbhi=4, datasets=("icbhi2017",))
    first = load_dataset("icbhi2017", tmp_path / "a" / "icbhi2017")
    with pytest.raises(ValueError, match="share id values"):
        combine_datasets(first, first)
    renamed = first.table.assign(id=first.table["id"] + "x", group="9" + first.table["group"].astype(str))
    other = type(first)(first.name, tmp_path / "b", renamed, [], [], {})
    combined = combine_datasets(first, other)
    assert len(combined.table) == 2 * len(first.table)
    assert combined.info["combined_roots"] == [str(first.root), str(tmp_path / "b")]


def test_respiratory_space_recipes_and_scales():
    configs = load_space("respiratory", "cpu").trial_configs()  # recipes already applied
    by_recipe = {c.recipe: c for c in configs if c.seed == 0}
    assert list(by_recipe) == ["AST", "AST+WRS", "AST+WRS+SAM", "AudioFuse"]
    assert [(c.model.architecture, c.train.balance, c.train.sam) for c in by_recipe.values()] == [
        ("ast", "none", False),
        ("ast", "sampler", False),
        ("ast", "sampler", True),
        ("fusion", "sampler", True),
    ]
    assert all(c.data.train_set == "icbhi2017" and c.data.eval_sets == ["icbhi2017:test"] for c in configs)
    paper = load_space("respiratory", "paper").trial_configs()
    assert len({c.seed for c in paper}) >= 5
    model = next(c for c in paper if c.recipe == "AST+WRS+SAM").model.to_dict()
    assert {k: model[k] for k in AST_BASE} == {**AST_BASE, "patch_size": (16, 16), "patch_stride": (10, 10)}
    with pytest.raises(SpaceError, match="recipe 'SAM' is not defined"):
        load_space("respiratory").trial_configs({"recipe": "SAM"})
    # a command-line override wins over a recipe's setting
    overridden = load_space("respiratory", "cpu").trial_configs({"train.balance": "class_weights"})
    assert {c.train.balance for c in overridden} == {"class_weights"}


@pytest.fixture(scope="module")
def tiny_icbhi(tmp_path_factory):
    root = tmp_path_factory.mktemp("icbhi")
    write_synthetic(root, seed=0, icbhi=6, datasets=("icbhi2017",))
    small = {
        "features.window_s": 1.0,
        "data.extra_roots": {},
        "data.validation_seed": 0,
        "model.vit_dim": 16,
        "model.vit_heads": 2,
        "model.vit_depth": 1,
    }
    config = load_space("respiratory").trial_configs()[0].with_settings(small)
    return config, prepare_data(config, root, progress=False, n_jobs=1)


def test_prepare_data_reports_the_split_and_standardises(tiny_icbhi):
    _, data = tiny_icbhi
    check = data.info["split_check"]["icbhi2017"]
    assert check["recordings_in_train_and_test"] == 0 and check["patients_train"] > 0 and check["patients_test"] > 0
    test = data.evals["icbhi2017:test"]
    assert (test.table["split"] == "test").all()
    assert not set(test.table["path"]) & (set(data.train.table["path"]) | set(data.val.table["path"]))
    assert data.train.images.shape[2:] == (128, 98)
    assert float(data.train.images.float().mean()) == pytest.approx(0.0, abs=1e-2)
    assert data.info["spectrogram_standardization"]["std"] > 0


def test_init_checkpoint_starts_training_from_the_ast_weights(tiny_icbhi, tmp_path):
    config, data = tiny_icbhi
    config = config.with_settings({"train.max_epochs": 1, "train.lr": 0.0, "train.weight_decay": 0.0})
    # a randomly initialised checkpoint with the layout of YuanGongND/ast (12 x 101 grid of a 128 x 1024 input)
    source = create_model({**config.model.to_dict(), "img_size": (128, 1024)})
    vit_state = source.spectrogram_branch.encoder.vit.state_dict()
    checkpoint = {f"module.v.{'dist_token' if k == 'reg_token' else k}": v for k, v in vit_state.items()}
    torch.save(checkpoint, tmp_path / "ast.pth")
    result = train_and_evaluate(config.with_settings({"model.init_checkpoint": str(tmp_path / "ast.pth")}), data)
    weights = result.best_state
    for name in ("blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "cls_token"):
        assert torch.equal(weights[f"spectrogram_branch.encoder.vit.{name}"], checkpoint[f"module.v.{name}"])
    assert torch.equal(weights["spectrogram_branch.encoder.vit.reg_token"], checkpoint["module.v.dist_token"])
    assert result.metrics["icbhi2017:test"]["confusion_matrix"] is not None


def test_run_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    from study.run import main

    assert (
        main(
            [
                "--space",
                "respiratory",
                "--out",
                str(tmp_path / "out"),
                "--init-checkpoint",
                str(tmp_path / "missing.pth"),
            ]
        )
        == 2
    )
    assert "--init-checkpoint" in capsys.readouterr().err


def test_load_model_rebuilds_the_architecture_a_recipe_set():
    """The respiratory space sets the architecture only through its recipes: a checkpoint's config
    is resolved, so evaluate.load_model rebuilds the AST that trained, not the default fusion model."""
    from study.evaluate import load_model

    config = next(c for c in load_space("respiratory", "cpu").trial_configs() if c.recipe == "AST")
    assert "model.architecture" not in load_space("respiratory").fixed()
    trained = create_model(config.model)
    rebuilt = load_model({"config": config.flat, "model": trained.state_dict()})
    assert rebuilt.config == trained.config and rebuilt.config.architecture == "ast"
