"""Registries of the names a study's settings refer to, and the plugins that add to them.

Every architecture (``model.architecture``), fusion head (``model.fusion``), dataset loader
(``data.train_set``, ``data.eval_sets``) and perturbation (a space's ``perturbations``) is looked up
by name in a :class:`Registry`, filled by a decorator in the style of timm's ``@register_model``:
:func:`study.models.register_model`, :func:`study.data.register_dataset` and
:func:`study.perturbations.register_perturbation`. The built-in ones register through the same
decorators when their module is imported.

A user's own names come from a plugin: a module that applies those decorators when imported.
It is loaded either

* by name: ``python -m study.run --plugin my_module`` (repeatable), :func:`load_plugins`; the study
  passes the names to every Ray worker that builds a model, which loads them there too; or
* as an installed package's entry point in the group ``audiofuse.plugins`` (``[project.entry-points.
  "audiofuse.plugins"] my_plugins = "my_package.plugins"``): loaded in every process, driver or
  worker, the first time any registry is asked for a name.

This module imports nothing heavy: the trainer imports it without any audio library.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "Registry", "load_plugins", "loaded_plugins"]

ENTRY_POINT_GROUP = "audiofuse.plugins"
# names appear in trial ids, feature-cache keys, file names and tracker metric names
_NAME = re.compile(r"[a-z][a-z0-9_]*")

_loaded: list[str] = []  # the modules load_plugins imported in this process, in order
_entry_points_loaded = False


class PluginError(ValueError):
    """A plugin cannot be loaded, or registers a name badly; the message names the module or name and the fix."""


class Registry(Mapping):
    """Name -> registered object (a builder, a head class, a loader, a function) of one kind, with
    what was registered alongside it.

    Parameters
    ----------
    kind : str
        What the names are, for messages ("fusion head").
    setting : str
        Where a study names them ("model.fusion").
    """

    def __init__(self, kind: str, setting: str):
        self.kind, self.setting = kind, setting
        self._objects: dict[str, Any] = {}
        self._info: dict[str, dict] = {}

    def register(self, name: str, obj: Any, **info) -> Any:
        """Register ``obj`` under ``name`` (with ``info``); returns ``obj``, so that decorators return it unchanged.

        Registering another object under a taken name raises PluginError; the same function or class
        registered again (its module imported a second time) replaces the first.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PluginError(
                f"{self.kind} name {name!r} must be lowercase letters, digits and underscores, starting with a letter"
            )
        previous = self._objects.get(name)
        if previous is not None and _origin(previous) != _origin(obj):
            raise PluginError(
                f"{self.kind} {name!r} is registered already (by {_origin(previous)}); "
                f"register {_origin(obj)} under another name"
            )
        self._objects[name] = obj
        self._info[name] = info
        return obj

    def info(self, name: str) -> dict:
        """What was registered with ``name`` (the keyword arguments of :meth:`register`)."""
        self.lookup(name)
        return self._info[name]

    def lookup(self, name: str) -> Any:
        """The object registered as ``name``; ValueError in one line, listing the registered names, if none is."""
        if name not in self:
            raise ValueError(f"{self.setting} {self.unknown(name)}")
        return self._objects[name]

    def unknown(self, name: Any) -> str:
        """Why ``name`` is not registered, in the project's form (``must be one of [...], got 'x'``) and how to add one."""
        return f"must be one of {sorted(self)}, got {name!r} (a plugin registers more: --plugin MODULE)"

    def __getitem__(self, name: str) -> Any:
        _load_entry_points()
        return self._objects[name]

    def __iter__(self) -> Iterator[str]:
        _load_entry_points()
        return iter(list(self._objects))

    def __len__(self) -> int:
        _load_entry_points()
        return len(self._objects)

    def __contains__(self, name: object) -> bool:
        _load_entry_points()
        return name in self._objects

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {sorted(self._objects)})"


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def load_plugins(modules: list[str] | tuple[str, ...]) -> list[str]:
    """Import each plugin module (by its dotted name) once in this process; returns every module loaded so far.

    Raises PluginError naming the module when it cannot be imported.
    """
    for module in modules:
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise PluginError(
                f"--plugin {module}: cannot import it ({type(error).__name__}: {error}); a plugin must be importable "
                "where the study runs: on PYTHONPATH, in the current folder, or installed"
            ) from error
        _loaded.append(module)
    return list(_loaded)


def loaded_plugins() -> list[str]:
    """The plugin modules :func:`load_plugins` imported in this process (the ones Ray's workers must load too)."""
    return list(_loaded)


def _load_entry_points() -> None:
    """Import the ``audiofuse.plugins`` entry points of the installed packages, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a plugin looking names up while it loads must not load itself again
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:  # noqa: BLE001 - a broken plugin, whatever it raised, in one line
            _entry_points_loaded = False  # every later lookup fails the same way, not with a name missing
            raise PluginError(
                f"the {ENTRY_POINT_GROUP!r} entry point {entry_point.name!r} ({entry_point.value}) failed to load: "
                f"{type(error).__name__}: {error}"
            ) from error
