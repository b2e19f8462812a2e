"""What the heads' ``bind_data`` compare: the classes (or outputs) a head was built with against those
the run's data states, before the first training step.

A head learns from one target of the batch; which one the data describes is found from, in order:
the head's ``target_key`` (when the model sets it), its name (the last part of ``spec_path``,
``heads.label``, which `edh.core.builder.build_component` records), else the only targets of the
head's task in ``DataInfo.targets``. What the data states about that target: its
``DataInfo.extra["head_defaults"][key]`` (``num_classes``, ``class_names``, ``ignore_index``...),
then ``DataInfo.class_names`` (the classes of a ``label`` target, or of detection boxes) or
``extra["mask_class_names"]`` (segmentation masks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edh.core.errors import SpecError

log = logging.getLogger("edh")


class ClassCountError(SpecError):
    """A head with fewer classes than its data's target (`check_classes`): ``head`` (its spec path),
    ``have`` (the head's classes), ``need`` (the data's), ``dataset`` and ``key`` (the target)."""

    def __init__(self, message: str, head: str, have: int, need: int, dataset: str, key: str) -> None:
        super().__init__(message)
        self.head, self.have, self.need, self.dataset, self.key = head, have, need, dataset, key


@dataclass
class DataTarget:
    """What the data says about one head's target: its key, its defaults and its class names."""

    key: str
    defaults: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    dataset: str = "the data"

    @property
    def num_classes(self) -> int | None:
        given = self.defaults.get("num_classes")
        if isinstance(given, int) and not isinstance(given, bool):
            return given
        return len(self.class_names) if self.class_names else None


def head_path(head: Any) -> str:
    """``model.heads.NAME`` of a head built from a spec, else its class name."""
    where = getattr(head, "spec_path", None)
    if isinstance(where, str) and where.startswith("heads."):
        return f"model.{where}"
    return where if isinstance(where, str) and where else type(head).__name__


def _head_name(head: Any) -> str | None:
    where = getattr(head, "spec_path", None)
    if isinstance(where, str) and where.startswith("heads."):
        return where.split(".", 1)[1]
    return None


def data_target(head: Any, info: Any, tasks: tuple[str, ...], class_names_for: tuple[str, ...] = (),
                extra_names: str | None = None) -> DataTarget | None:
    """The target of ``info`` (a `DataInfo`) that ``head`` learns from, when the data describes one of
    the head's ``tasks`` (``classification``...); None when nothing can be compared.

    ``class_names_for``: target keys whose classes are ``info.class_names`` (``label``); a ``*`` entry
    means any target of the task (detection). ``extra_names``: an ``info.extra`` entry listing the
    classes (``mask_class_names``)."""
    if info is None:
        return None
    targets = getattr(info, "targets", None) or {}
    extra = getattr(info, "extra", None) or {}
    if not isinstance(targets, dict) or not isinstance(extra, dict):
        return None
    defaults = extra.get("head_defaults") or {}
    explicit = head.target_key or _head_name(head)
    if explicit in targets:
        keys = [explicit] if targets[explicit] in tasks else []
    else:
        keys = [k for k, task in targets.items() if task in tasks]
    if not keys:
        return None
    dataset = f"the data {extra['dataset']!r}" if extra.get("dataset") else "the data"
    for key in keys:
        own = defaults.get(key) if isinstance(defaults.get(key), dict) else None
        if own and "num_classes" in own:
            names = own.get("class_names")
            return DataTarget(key, dict(own), list(names) if isinstance(names, list) else None, dataset)
    info_names = list(getattr(info, "class_names", None) or [])
    for key in keys:
        own = defaults.get(key) if isinstance(defaults.get(key), dict) else {}
        if info_names and (key in class_names_for or "*" in class_names_for):
            return DataTarget(key, dict(own), info_names, dataset)
        if extra_names and isinstance(extra.get(extra_names), list) and extra[extra_names]:
            return DataTarget(key, dict(own), list(extra[extra_names]), dataset)
    own = defaults.get(keys[0])
    return DataTarget(keys[0], dict(own), None, dataset) if isinstance(own, dict) and own else None


def check_classes(head: Any, target: DataTarget | None, first: int = 0, what: str = "classes") -> None:
    """`ClassCountError` (a `SpecError`) when ``head.num_classes`` is fewer than the data's classes of
    ``target`` (a label past the head's outputs would fail mid-training); a warning when it is more (outputs never
    labelled) or when the head's class names differ from the data's. ``first``: the first label (0, or
    1 for detection, where 0 is the background)."""
    if target is None or target.num_classes is None:
        return
    have, need = int(head.num_classes), int(target.num_classes)
    path = head_path(head)
    if have < need:
        raise ClassCountError(
            f"{path}.num_classes is {have}, but {target.dataset} has {need} {what} in its {target.key!r} target "
            f"(labels {first}..{first + need - 1}): training would stop at the first batch holding a label the "
            f"head has no output for (an IndexError mid-epoch). Set num_classes: {need} in {path}, or leave "
            "num_classes out to take the data's", path, have, need, target.dataset, target.key
        )
    if have > need:
        log.warning("%s.num_classes is %d, but %s has only %d %s in its %r target: %d outputs of the head never get "
                    "a label. Set num_classes: %d unless other data will fill them", path, have, target.dataset, need,
                    what, target.key, have - need, need)
        return
    names = head.class_names
    numbered = [[str(i) for i in range(start, start + len(names or []))] for start in (0, 1)]  # default names
    if target.class_names and names and list(names) != list(target.class_names) and list(names) not in numbered:
        log.warning("%s.class_names (%s) differ from the class names of %s (%s); predictions are named with the "
                    "head's. Leave class_names out to take the data's", path, ", ".join(map(str, names[:10])),
                    target.dataset, ", ".join(map(str, target.class_names[:10])))
