"""The papers' own numbers and claims, to set beside a study's results.

AudioFuse (seeds/000, 001): single runs on the PhysioNet 2016 test set and
zero-shot on PASCAL, no intervals. SAM-AST (seeds/002): ICBHI 2017 official
split. Rates are fractions in [0, 1] like every metric in this project.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["AUDIOFUSE_RESULTS", "SAM_AST_ICBHI", "Claim", "CLAIMS", "paper_model", "paper_value"]

# Model name in the paper -> metric -> value. "pascal_roc_auc" is the zero-shot PASCAL ROC-AUC.
AUDIOFUSE_RESULTS: dict[str, dict[str, float]] = {
    "spectrogram ViT": {"roc_auc": 0.8066, "mcc": 0.4444, "f1": 0.7383, "accuracy": 0.7193, "pascal_roc_auc": 0.4873},
    "waveform 1D CNN": {"roc_auc": 0.8223, "mcc": 0.4884, "f1": 0.7057, "accuracy": 0.7376, "pascal_roc_auc": 0.6782},
    "AudioFuse (concat fusion)": {
        "roc_auc": 0.8608,
        "mcc": 0.5508,
        "f1": 0.7664,
        "accuracy": 0.7741,
        "pascal_roc_auc": 0.7181,
    },
}

# SAM-AST on ICBHI 2017: Score 68.10 %, sensitivity 68.31 %, so specificity = 2 Score - sensitivity.
SAM_AST_ICBHI = {"score": 0.6810, "sensitivity": 0.6831, "specificity": 2 * 0.6810 - 0.6831}


class Claim(NamedTuple):
    """A paper's ranking claim: ``winner`` beats every one of ``losers`` on ``metric`` in ``eval_set``.

    Configurations are matched on the setting ``axis`` (``fixed`` settings
    must hold as well); the other settings of winner and loser must agree.
    ``paper_differences`` gives the paper's winner - loser gap per loser, or
    None where the paper states the ranking without numbers.
    """

    key: str
    text: str
    axis: str
    winner: str
    losers: tuple[str, ...]
    eval_set: str
    metric: str
    fixed: dict
    paper_differences: dict[str, float | None]


def _gap(winner: str, loser: str, metric: str) -> float:
    return round(AUDIOFUSE_RESULTS[winner][metric] - AUDIOFUSE_RESULTS[loser][metric], 4)


_FUSION, _VIT, _CNN = "AudioFuse (concat fusion)", "spectrogram ViT", "waveform 1D CNN"

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "fusion_beats_branches_physionet",
        "AudioFuse beats each single branch on the PhysioNet 2016 test ROC-AUC",
        "model.architecture",
        "fusion",
        ("spectrogram", "waveform"),
        "physionet2016:test",
        "roc_auc",
        {"model.fusion": "concat"},
        {"spectrogram": _gap(_FUSION, _VIT, "roc_auc"), "waveform": _gap(_FUSION, _CNN, "roc_auc")},
    ),
    Claim(
        "fusion_beats_branches_pascal",
        "AudioFuse beats each single branch zero-shot on PASCAL (ROC-AUC)",
        "model.architecture",
        "fusion",
        ("spectrogram", "waveform"),
        "pascal",
        "roc_auc",
        {"model.fusion": "concat"},
        {"spectrogram": _gap(_FUSION, _VIT, "pascal_roc_auc"), "waveform": _gap(_FUSION, _CNN, "pascal_roc_auc")},
    ),
    Claim(
        "concat_beats_attention_and_film",
        "Concatenation fusion beats cross-attention and gated FiLM (ROC-AUC, PhysioNet test)",
        "model.fusion",
        "concat",
        ("cross_attention", "film"),
        "physionet2016:test",
        "roc_auc",
        {"model.architecture": "fusion"},
        {"cross_attention": None, "film": None},
    ),
)


def paper_model(settings: dict) -> str | None:
    """The AudioFuse paper's model a configuration reproduces, from its ``model.*`` settings, or None."""
    architecture = settings.get("model.architecture")
    if architecture == "spectrogram":
        return _VIT
    if architecture == "waveform":
        return _CNN
    if architecture == "fusion" and settings.get("model.fusion") == "concat":
        return _FUSION
    return None


def paper_value(settings: dict, eval_set: str, metric: str) -> float | None:
    """The paper's ``metric`` of the model a configuration reproduces on ``eval_set`` (PhysioNet's test set or
    PASCAL zero-shot), or None where the paper gives none."""
    values = AUDIOFUSE_RESULTS.get(paper_model(settings) or "", {})
    if eval_set == "pascal":
        return values.get(f"pascal_{metric}")
    return values.get(metric) if eval_set.startswith("physionet2016") else None
