"""A trial's id, its data key and its label, from its flat settings."""

from __future__ import annotations

import hashlib
import json

from .config import identity_settings
from .trial_data import data_settings

__all__ = ["trial_id_of", "data_key_of", "trial_label"]


def _json_digest(obj, digest_size: int) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=digest_size).hexdigest()


def trial_id_of(config: dict) -> str:
    """Stable id of a trial config: the same grid point always gets the same id. A setting added
    later (config.ADDED_SETTINGS) at its old value is left out, so old studies keep their ids."""
    return _json_digest(identity_settings(config), 5)


def data_key_of(config: dict) -> str:
    """Key of the data and feature settings: trials sharing it share one TrialData in the object store."""
    return _json_digest(identity_settings(data_settings(config)), 6)


def trial_label(config: dict, axes: list[str]) -> str:
    """A trial's grid values, as Tune's table and the dry run show them (numbers to 4 significant digits)."""
    return " ".join(
        f"{k.split('.')[-1]}={config[k]:.4g}" if isinstance(config[k], float) else f"{k.split('.')[-1]}={config[k]}"
        for k in axes
    )
