"""A trial's features as tensors: what training and evaluation read.

A :class:`TrialData` holds the train and validation splits, the evaluation sets
(clean, evaluation-time variants and perturbed) and the feature profile. It is
built by :func:`study.trial_data.prepare_data`, shared through Ray's object store,
and placed on a trial's device by :func:`place_splits`. This module needs only
torch, numpy and pandas, so the trainer runs where no audio library is installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from .cache import FeatureSet

__all__ = ["PerturbedSplit", "SplitData", "TrialData", "place_splits"]


@dataclass
class SplitData:
    """Features of one split as tensors kept in memory (float16; cast per batch).

    images : (n_windows, 1, H, W); waves : (n_windows, 1, L); item_index : (n_windows,)
    row of ``table`` per window; labels : (n_items,) task labels.
    """

    name: str
    table: pd.DataFrame
    images: torch.Tensor
    waves: torch.Tensor
    item_index: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_features(cls, name: str, features: FeatureSet) -> SplitData:
        # np.array copies memory-mapped cache packs into memory once, instead of every epoch
        return cls(
            name,
            features.table,
            torch.from_numpy(np.array(features.images))[:, None],
            torch.from_numpy(np.array(features.waves))[:, None],
            torch.from_numpy(np.array(features.item_index)),
            torch.as_tensor(np.array(features.table["label"].to_numpy())),
        )

    @property
    def n_items(self) -> int:
        return len(self.table)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.images, self.waves, self.item_index, self.labels))

    def to(self, device: torch.device, pin: bool = False) -> SplitData:
        """The same split with its tensors on ``device`` (this object when they are there already);
        ``pin`` page-locks host tensors so per-batch copies to a GPU run asynchronously."""
        tensors = [self.images, self.waves, self.item_index, self.labels]
        if pin and device.type == "cpu":
            moved = [t.pin_memory() for t in tensors]
        elif all(t.device == device for t in tensors):
            return self
        else:
            moved = [t.to(device) for t in tensors]
        return dataclasses.replace(self, images=moved[0], waves=moved[1], item_index=moved[2], labels=moved[3])


@dataclass
class PerturbedSplit:
    """An evaluation set with one perturbation at one severity applied to its audio."""

    eval_set: str
    perturbation: str  # id, e.g. "codec:mp3"
    severity: int
    split: SplitData


@dataclass
class TrialData:
    """Everything a trial reads: train/val splits, evaluation sets (clean and perturbed), the profile."""

    train: SplitData
    val: SplitData
    evals: dict[str, SplitData]
    profile: object
    info: dict = field(default_factory=dict)
    perturbed: list[PerturbedSplit] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of every split's tensors: what ray.put stores."""
        splits = [self.train, self.val, *self.evals.values(), *(p.split for p in self.perturbed)]
        return sum(split.nbytes for split in splits)


def place_splits(data: TrialData, device: torch.device, headroom: float = 0.5) -> tuple[TrialData, bool]:
    """Put every split's tensors on ``device`` once, when they fit in ``headroom`` of its free memory.

    Returns (data, on_device). On a GPU the training step then draws batches by index on the
    device, with no host copy; when the features do not fit they stay in pinned host memory and
    each batch is copied asynchronously. On the CPU the data is returned as it is.
    """
    if device.type != "cuda":
        return data, False
    splits = [data.train, data.val, *data.evals.values(), *(p.split for p in data.perturbed)]
    free, _total = torch.cuda.mem_get_info(device)
    on_device = sum(split.nbytes for split in splits) <= headroom * free

    def move(split: SplitData) -> SplitData:
        return split.to(device) if on_device else split.to(torch.device("cpu"), pin=True)

    placed = dataclasses.replace(
        data,
        train=move(data.train),
        val=move(data.val),
        evals={k: move(v) for k, v in data.evals.items()},
        perturbed=[dataclasses.replace(p, split=move(p.split)) for p in data.perturbed],
    )
    return placed, on_device
