"""An example plugin: a fusion head, a perturbation and a dataset loader of a user's own, registered through
the decorators the built-ins use. ``python -m study.run --plugin audiofuse_example_plugin`` loads it (this
folder on PYTHONPATH); tests/test_registry.py and tests/test_plugin_study.py use it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from study.data import ProblemLog, recording_row, register_dataset
from study.models import register_model
from study.perturbations import register_perturbation

# tests/test_plugin_study.py asks which processes imported the plugin: each appends its pid and program
if os.environ.get("AUDIOFUSE_EXAMPLE_PLUGIN_LOG"):
    with open(os.environ["AUDIOFUSE_EXAMPLE_PLUGIN_LOG"], "a") as log:
        log.write(f"{os.getpid()} {Path(sys.argv[0]).name}\n")


@register_model("gated_sum", kind="fusion")
class GatedSumHead(nn.Module):
    """Both branches projected to fusion_dim, mixed by a gate computed from both, then classified."""

    input_keys = {"spectrogram": ("spectrogram",), "waveform": ("waveform",)}

    def __init__(self, spec_dim: int, wave_dim: int, config):
        super().__init__()
        self.spec = nn.Linear(spec_dim, config.fusion_dim)
        self.wave = nn.Linear(wave_dim, config.fusion_dim)
        self.gate = nn.Linear(2 * config.fusion_dim, config.fusion_dim)
        self.classifier = nn.Linear(config.fusion_dim, config.num_classes)

    def forward(self, features: dict) -> torch.Tensor:
        spec, wave = self.spec(features["spectrogram"]), self.wave(features["waveform"])
        gate = torch.sigmoid(self.gate(torch.cat([spec, wave], dim=-1)))
        return self.classifier(torch.relu(gate * spec + (1 - gate) * wave))


CLIP_LEVELS = {1: 0.8, 2: 0.6, 3: 0.4, 4: 0.2, 5: 0.1}  # five levels: a scale of its own, not 1-4


@register_perturbation(
    "clipping", severities=CLIP_LEVELS, label=lambda severity: f"clipped at {CLIP_LEVELS[severity]:.0%}"
)
def clipping(x: np.ndarray, sr: int, severity: int) -> np.ndarray:
    """Hard clipping at a fraction of the recording's peak (an overdriven amplifier)."""
    limit = CLIP_LEVELS.get(severity, 1.0) * np.max(np.abs(x))
    return np.clip(x, -limit, limit).astype(np.float32)


@register_dataset("folders")
def load_folders(root, *, skip_bad: bool = False) -> pd.DataFrame:
    """ROOT/normal/*.wav and ROOT/abnormal/*.wav, every recording a test recording."""
    log = ProblemLog(skip_bad)
    rows = [
        recording_row(path, label, "folders", log, original_label=folder)
        for label, folder in enumerate(["normal", "abnormal"])
        for path in sorted(Path(root, folder).glob("*.wav"))
    ]
    return pd.DataFrame([row for row in rows if row is not None])
