"""Registries of components by role: ``@register_encoder("resnet50")`` and friends.

Discovery:

- built-ins: plain package import; importing ``edh.encoders`` registers every encoder.
- plug-ins: other installed distributions declare Python entry points in the groups
  ``edh.encoders``, ``edh.decoders``, ``edh.heads`` and ``edh.datasets``. Each entry point names a
  module (or an object in one); loading it registers components with the same decorators. A
  role's entry points are loaded the first time its registry is used (`names`, `lookup`), after
  the built-ins, so ``import edh`` never scans installed packages.

A name registered twice (by edh and a plug-in, or by two plug-ins) is a `ComponentClashError`
naming both distributions; a plug-in that fails to import is a `PluginLoadError` naming the entry
point and its distribution, with the original exception chained. An unknown name is an error that
lists close matches.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

ROLES = ("encoder", "decoder", "head", "dataset")
_PACKAGES = {"encoder": "edh.encoders", "decoder": "edh.decoders", "head": "edh.heads", "dataset": "edh.data"}
ENTRY_POINT_GROUPS = {"encoder": "edh.encoders", "decoder": "edh.decoders", "head": "edh.heads",
                      "dataset": "edh.datasets"}
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {role: {} for role in ROLES}
_OWNERS: dict[str, dict[str, str]] = {role: {} for role in ROLES}  # role -> name -> distribution name
_PLUGINS_SCANNED: set[str] = set()  # roles whose entry points were looked up
_LOADED_ENTRY_POINTS: set[tuple[str, str, str]] = set()  # (group, name, value) loaded without error
_LOADING: list[str] = []  # distribution names of the entry points being loaded (innermost last)


class UnknownComponentError(KeyError):
    """A name that no component of that role is registered under."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class ComponentClashError(ValueError):
    """One name registered twice in a role: by edh and a plug-in, by two plug-ins, or twice by one."""


class PluginLoadError(ImportError, ValueError):
    """A plug-in entry point that failed to load; the original exception is its ``__cause__``.

    Also a ValueError, so the command line prints it as one paragraph (``-v``: the full traceback).
    """

    def __init__(self, message: str, entry_point: str = "", distribution: str = "") -> None:
        super().__init__(message)
        self.entry_point, self.distribution = entry_point, distribution

    def __str__(self) -> str:
        return str(self.args[0])


def _known_owner(module: str) -> str | None:
    """The distribution of a registering module when it is known for free: ``edh`` for edh's own
    modules, the entry point's distribution while a plug-in loads; None otherwise."""
    if module == "edh" or module.startswith("edh."):
        return "edh"
    return _LOADING[-1] if _LOADING else None


def _distribution_of(module: str) -> str:
    """`_known_owner`, else the installed distribution providing the module's top-level package
    (scanned only when needed: for an error message or `owner`), else the module name itself."""
    known = _known_owner(module)
    if known:
        return known
    try:
        from importlib.metadata import packages_distributions

        found = packages_distributions().get(module.split(".", 1)[0])
    except Exception:  # noqa: BLE001 - broken metadata must not hide the real error
        found = None
    return found[0] if found else module


def _owner_of(role: str, name: str) -> str:
    return _OWNERS[role].get(name) or _distribution_of(_REGISTRY[role][name].__module__)


def _register(role: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY[role]
        if name in table:
            first, second = _owner_of(role, name), _distribution_of(builder.__module__)
            plugin = second if second != "edh" else first
            fix = "pick another name" if first == second else f"rename it in {plugin}, or uninstall {plugin}"
            raise ComponentClashError(
                f"{role} {name!r} is registered by {first} and by {second} "
                f"({table[name].__module__}.{_qualname(table[name])} and {builder.__module__}.{_qualname(builder)}); "
                f"{fix}"
            )
        table[name] = builder
        owner = _known_owner(builder.__module__)
        if owner:
            _OWNERS[role][name] = owner
        return builder

    return decorator


def _qualname(builder: Any) -> str:
    return getattr(builder, "__qualname__", type(builder).__name__)


def register_encoder(name: str):
    return _register("encoder", name)


def register_decoder(name: str):
    return _register("decoder", name)


def register_head(name: str):
    return _register("head", name)


def register_dataset(name: str):
    return _register("dataset", name)


# What a builder declares when it does not say: a builder may be a class (which inherits the role
# base's attributes) or a function such as ``resnet18``.
DECLARED_DEFAULTS: dict[str, Any] = {"accepts": ("pyramid",), "produces": "pyramid", "model_option": None,
                                     "requires": ""}


def declared(builder: Any, attribute: str) -> Any:
    """What a registered builder declares (`DECLARED_DEFAULTS` when it states nothing):

    - ``accepts`` / ``produces``: the `FeatureSpec` kinds it reads and gives;
    - ``requires``: what a decoder needs of its encoder beyond the kind, in words (``edh list``);
    - ``model_option``: the option that a name ``<registered name>:<model>`` fills with ``<model>``
      (the ``timm`` encoder: ``timm:convnext_tiny`` sets ``model_name``), or None.
    """
    return getattr(builder, attribute, DECLARED_DEFAULTS[attribute])


def family(role: str, name: str) -> tuple[str, str | None]:
    """``("timm", "convnext_tiny")`` for ``timm:convnext_tiny`` when the builder registered as ``timm``
    takes model names (``model_option``); ``(name, None)`` otherwise."""
    base, sep, model = name.partition(":")
    if sep and base in _REGISTRY[role] and declared(_REGISTRY[role][base], "model_option"):
        return base, model
    return name, None


def owner(role: str, name: str) -> str:
    """The distribution that registered ``name`` (``edh`` for a built-in)."""
    _ensure_loaded(role)
    name, _ = family(role, name)
    if name not in _REGISTRY[role]:
        lookup(role, name)  # raises the usual UnknownComponentError
    return _owner_of(role, name)


def _entry_points(group: str) -> list[Any]:
    """The entry points of ``group``, each once (a distribution found twice on the path counts once)."""
    from importlib.metadata import entry_points

    seen, out = set(), []
    for point in entry_points(group=group):
        key = (point.name, point.value)
        if key not in seen:
            seen.add(key)
            out.append(point)
    return sorted(out, key=lambda p: (_dist_name(p), p.name))


def _dist_name(point: Any) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return point.value.split(":", 1)[0].split(".", 1)[0]
    try:
        return dist.metadata["Name"] or dist.name
    except Exception:  # noqa: BLE001
        return getattr(dist, "name", None) or point.value.split(":", 1)[0]


def load_entry_point(point: Any, group: str) -> None:
    """Load one plug-in entry point; its module registers components as it is imported.

    A failure undoes whatever the entry point registered before failing (so the same error comes
    again on the next use, rather than a half-registered plug-in) and raises `PluginLoadError`
    (or the `ComponentClashError` itself, which already names both distributions).
    """
    key = (group, point.name, point.value)
    if key in _LOADED_ENTRY_POINTS:
        return
    dist = _dist_name(point)
    before = {role: set(table) for role, table in _REGISTRY.items()}
    _LOADING.append(dist)
    try:
        point.load()
    except BaseException as error:
        _undo_registrations(before)
        if isinstance(error, ComponentClashError) or not isinstance(error, Exception):
            raise
        raise PluginLoadError(
            f"plug-in entry point {point.name!r} ({group}: {point.name} = {point.value}) of distribution {dist} "
            f"failed to load: {type(error).__name__}: {error}. Fix or uninstall {dist} (pip uninstall {dist}).",
            f"{point.name} = {point.value}", dist,
        ) from error
    finally:
        _LOADING.pop()
    _LOADED_ENTRY_POINTS.add(key)


def _undo_registrations(before: dict[str, set[str]]) -> None:
    """Drop what was registered since ``before`` and forget the modules that registered it, so that
    loading the plug-in again runs them again (rather than finding them half-done in ``sys.modules``)."""
    import sys

    modules = set()
    for role, table in _REGISTRY.items():
        for added in set(table) - before[role]:
            modules.add(table.pop(added).__module__)
            _OWNERS[role].pop(added, None)
    for module in modules:
        if module.split(".", 1)[0] != "edh":
            sys.modules.pop(module, None)


def load_plugins(role: str) -> None:
    """Load every entry point of ``role``'s group that is not loaded yet (after the built-ins)."""
    importlib.import_module(_PACKAGES[role])
    group = ENTRY_POINT_GROUPS[role]
    _PLUGINS_SCANNED.add(role)  # first, so a plug-in that asks the registry while it loads does not recurse
    for point in _entry_points(group):
        load_entry_point(point, group)


def _ensure_loaded(role: str) -> None:
    importlib.import_module(_PACKAGES[role])
    if role not in _PLUGINS_SCANNED:
        try:
            load_plugins(role)
        except BaseException:
            _PLUGINS_SCANNED.discard(role)  # a failed plug-in fails again on the next use, not silently
            raise


def names(role: str) -> list[str]:
    """Registered names of one role, sorted (built-ins and plug-ins)."""
    _ensure_loaded(role)
    return sorted(_REGISTRY[role])


def lookup(role: str, name: str, where: str = "") -> Callable[..., Any]:
    """The builder registered as ``name``; an `UnknownComponentError` listing close matches if none.

    ``<family>:<model>`` names (``timm:convnext_tiny``) are resolved by the builder registered as
    ``<family>`` when it declares a ``model_option`` (see `family`).
    """
    _ensure_loaded(role)
    table = _REGISTRY[role]
    name, _ = family(role, name)
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    place = f" (at {where})" if where else ""
    raise UnknownComponentError(
        f"unknown {role} {name!r}{place}. {hint}Registered {role}s: {', '.join(sorted(table))}. "
        f"Run `edh list {role}s` to see them with what they accept."
    )
