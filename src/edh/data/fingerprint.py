"""A dataset's fingerprint: what a run trained on, so that eval and predict can say what changed.

`record` (called by ``build_data``) puts into ``DataInfo.fingerprint`` (a run's ``data.json``)::

    format: 1
    dataset: the dataset's name
    classes: {"class_names": [...], "mask_class_names": [...]}   # in id order
    preprocessing: {input_kind, in_channels, image_size, mean, std, reader}
    splits: {train | val | test: {count, samples_sha256 (datasets of files) | content_sha256 (in memory)}}
    files: "data_files.json" (the sample ids of each split, beside data.json) or null

Sample ids are the files' paths relative to the dataset's root (``cat/001.png``), from the split
datasets' ``sample_ids()``; in-memory datasets give a ``content_digest()`` instead. `differences`
compares a recorded fingerprint with the data as it is now and names every change: classes
renamed / added / removed / re-numbered, files added, removed or moved between splits, split
counts, preprocessing. `info_differences` compares ``data.json``'s own fields (what predict uses)
with its fingerprint (what training used). Not covered: a file whose content changed under the
same name (sizes and pixels are not hashed).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

FORMAT = 1
FILES_NAME = "data_files.json"
SPLITS = ("train", "val", "test")
SHOWN = 5  # files named per kind of change; the rest are counted


def relative_id(path: str | Path, root: str | Path) -> str:
    """A sample id: ``path`` relative to ``root``, with ``/`` separators."""
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def class_lists(info: Any) -> dict[str, list[str]]:
    """The class names a run's outputs are numbered by: ``class_names`` and ``mask_class_names``."""
    classes: dict[str, list[str]] = {}
    if info.class_names:
        classes["class_names"] = [str(c) for c in info.class_names]
    masks = (info.extra or {}).get("mask_class_names")
    if masks:
        classes["mask_class_names"] = [str(c) for c in masks]
    return classes


def preprocessing(info: Any) -> dict[str, Any]:
    """What turns a file into the model's input: channels, size, normalisation and the pixel rule."""
    from edh.data.files import READER

    return {
        "input_kind": info.input_kind, "in_channels": int(info.in_channels),
        "image_size": [int(v) for v in info.image_size] if info.image_size else None,
        "mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
        "reader": READER if info.input_kind == "image" else None,
    }


def _sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:  # an iterable dataset
        return None


def sample_lists(bundle: Any) -> dict[str, list[str]] | None:
    """Each split's sample ids, or ``None`` when a split's dataset gives none."""
    lists = {}
    for split in SPLITS:
        get = getattr(getattr(bundle, split), "sample_ids", None)
        if not callable(get):
            return None
        lists[split] = [str(i) for i in get()]
    return lists


def make(name: str, bundle: Any) -> tuple[dict[str, Any], dict[str, list[str]] | None]:
    """The fingerprint of ``bundle`` (dataset ``name``) and its splits' sample ids (if it has them)."""
    lists = sample_lists(bundle)
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        dataset = getattr(bundle, split)
        entry: dict[str, Any] = {"count": _length(dataset)}
        if lists is not None:
            entry["samples_sha256"] = _sha(lists[split])
        elif callable(getattr(dataset, "content_digest", None)):
            entry["content_sha256"] = dataset.content_digest()
        splits[split] = entry
    fingerprint = {"format": FORMAT, "dataset": name, "classes": class_lists(bundle.info),
                   "preprocessing": preprocessing(bundle.info), "splits": splits,
                   "files": FILES_NAME if lists is not None else None}
    return fingerprint, lists


def record(name: str, bundle: Any) -> None:
    """Set ``bundle.info.fingerprint``; datasets of files also get ``bundle.files["data_files.json"]``."""
    fingerprint, lists = make(name, bundle)
    bundle.info.fingerprint = fingerprint
    if lists is not None:
        bundle.files[FILES_NAME] = json.dumps({"format": FORMAT, "splits": lists}, indent=0) + "\n"


def read_lists(run_dir: str | Path,
               fingerprint: dict[str, Any] | None) -> tuple[dict[str, list[str]] | None, str | None]:
    """The recorded sample ids of each split (``RUN/data_files.json``), or ``None`` and why not."""
    name = (fingerprint or {}).get("files")
    if not name:
        return None, None
    path = Path(run_dir) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        lists = {split: [str(i) for i in data["splits"][split]] for split in SPLITS}
    except FileNotFoundError:
        return None, f"{path}, which lists the run's files, is missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{path}, which lists the run's files, cannot be read ({error})"
    return lists, None


# ---- comparing ---------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    return a == b


def _names(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(items[:SHOWN])
    return shown + (f" ... and {total - SHOWN} more" if total > SHOWN else "")


def _by_class(ids: list[str], name: str) -> set[str]:
    prefix = name + "/"
    return {i[len(prefix):] for i in ids if i.startswith(prefix)}


def _class_lines(key: str, recorded: list[str], now: list[str], rec_ids: list[str] | None,
                 now_ids: list[str] | None) -> tuple[list[str], set[str]]:
    """Lines for changed classes of one kind, and the classes renamed (their files are not listed again)."""
    what = "mask class" if key == "mask_class_names" else "class"
    removed = [c for c in recorded if c not in now]
    added = [c for c in now if c not in recorded]
    lines, renamed = [], set()
    if key == "class_names" and rec_ids is not None and now_ids is not None:
        for old in list(removed):
            before = _by_class(rec_ids, old)
            for new in list(added):
                after = _by_class(now_ids, new)
                if before and len(before & after) >= max(1, len(before) // 2):
                    lines.append(f"{what} {old!r} was renamed to {new!r} (its folder holds {len(after)} file(s), "
                                 f"{len(before & after)} of them the run's); the model knows it only as {old!r}")
                    removed.remove(old)
                    added.remove(new)
                    renamed |= {old, new}
                    break
    folders = key == "class_names"  # an image folder's ids start with their class: count its files
    for name in removed:
        count = f" ({len(_by_class(rec_ids, name))} file(s) at training)" if rec_ids is not None and folders else ""
        lines.append(f"{what} {name!r} is gone{count}")
    for name in added:
        count = f" ({len(_by_class(now_ids, name))} file(s))" if now_ids is not None and folders else ""
        lines.append(f"{what} {name!r} is new{count}; the model has no output for it")
    shifted = [f"{c!r} {recorded.index(c)} -> {now.index(c)}" for c in recorded
               if c in now and recorded.index(c) != now.index(c)]
    if shifted:
        lines.append(f"{what} ids moved ({', '.join(shifted[:8])}{' ...' if len(shifted) > 8 else ''}): labels on "
                     "disk no longer mean what the model's outputs mean")
    if not lines and recorded != now:
        lines.append(f"{what}es differ: {recorded} at training, {now} now")
    return lines, renamed


def _file_lines(recorded: dict[str, list[str]], now: dict[str, list[str]], renamed: set[str]) -> list[str]:
    def outside_renamed(i: str) -> bool:
        return i.split("/", 1)[0] not in renamed

    rec_split = {i: s for s in SPLITS for i in recorded[s]}
    now_split = {i: s for s in SPLITS for i in now[s]}
    added = sorted(i for i in now_split if i not in rec_split and outside_renamed(i))
    removed = sorted(i for i in rec_split if i not in now_split and outside_renamed(i))
    moved: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i, split in rec_split.items():
        if i in now_split and now_split[i] != split:
            moved[(split, now_split[i])].append(i)
    lines = []
    if added:
        lines.append(f"{len(added)} file(s) on disk that the run never saw: {_names(added)}")
    if removed:
        lines.append(f"{len(removed)} file(s) of the run's data are gone: {_names(removed)}")
    for (before, after), ids in sorted(moved.items()):
        ids.sort()
        warning = (f" (the model trained on them: metrics on the {after} split would be optimistic)"
                   if before == "train" and after in ("test", "val") else "")
        lines.append(f"{len(ids)} file(s) moved from the {before} split to the {after} split{warning}: {_names(ids)}")
    return lines


def _count_line(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    before = [recorded.get(s, {}).get("count") for s in SPLITS]
    after = [now.get(s, {}).get("count") for s in SPLITS]
    if before == after:
        return []
    show = lambda counts: " / ".join("?" if c is None else str(c) for c in counts)  # noqa: E731
    return [f"split sizes (train / val / test): {show(before)} at training, {show(after)} now"]


def differences(recorded: dict[str, Any], now: dict[str, Any], recorded_lists: dict[str, list[str]] | None,
                now_lists: dict[str, list[str]] | None, lists_note: str | None = None) -> tuple[list[str], list[str]]:
    """``(hard, soft)`` differences between a recorded fingerprint and the data's now.

    ``hard`` ones make eval refuse (without ``--allow-changed-data``); ``soft`` ones (the pixel
    reading rule of another edh version) are warnings. A recorded fingerprint rebuilt from an old
    run's ``data.json`` (no ``splits``) compares only classes and preprocessing.
    """
    hard: list[str] = []
    soft: list[str] = []
    if recorded.get("dataset") and now.get("dataset") and recorded["dataset"] != now["dataset"]:
        hard.append(f"dataset: {recorded['dataset']!r} at training, {now['dataset']!r} now")
    renamed: set[str] = set()
    rec_ids = [i for s in SPLITS for i in recorded_lists[s]] if recorded_lists is not None else None
    now_ids = [i for s in SPLITS for i in now_lists[s]] if now_lists is not None else None
    rec_classes, now_classes = recorded.get("classes", {}), now.get("classes", {})
    for key in sorted(set(rec_classes) | set(now_classes)):
        lines, names = _class_lines(key, rec_classes.get(key, []), now_classes.get(key, []), rec_ids, now_ids)
        hard += lines
        renamed |= names
    rec_pre, now_pre = recorded.get("preprocessing", {}), now.get("preprocessing", {})
    for key in rec_pre:
        if key in now_pre and not _same(rec_pre[key], now_pre[key]):
            line = f"preprocessing {key}: {rec_pre[key]} at training, {now_pre[key]} now"
            (soft if key == "reader" else hard).append(line)
    rec_splits, now_splits = recorded.get("splits"), now.get("splits", {})
    if rec_splits is None:
        return hard, soft
    if recorded_lists is not None and now_lists is not None:
        hard += _file_lines(recorded_lists, now_lists, renamed) + _count_line(rec_splits, now_splits)
        return hard, soft
    changed = []
    for split in SPLITS:
        a, b = rec_splits.get(split, {}), now_splits.get(split, {})
        for key in ("samples_sha256", "content_sha256"):
            if key in a and key in b and a[key] != b[key]:
                changed.append(split)
                break
    hard += _count_line(rec_splits, now_splits)
    if changed:
        why = f"; {lists_note}" if lists_note else ""
        hard.append(f"the samples of the {' / '.join(changed)} split(s) differ from the run's (their hash)" + why)
    return hard, soft


def info_differences(info: Any) -> list[str]:
    """``data.json``'s own fields against its fingerprint: what predict would use against what training used."""
    fingerprint = info.fingerprint
    if not fingerprint:
        return []
    lines = []
    recorded, now = fingerprint.get("preprocessing", {}), preprocessing(info)
    for key in ("input_kind", "in_channels", "image_size", "mean", "std"):
        if key in recorded and not _same(recorded[key], now[key]):
            lines.append(f"{key} is {now[key]} but the run was trained with {recorded[key]}")
    rec_classes, now_classes = fingerprint.get("classes", {}), class_lists(info)
    for key in sorted(set(rec_classes) | set(now_classes)):
        if rec_classes.get(key, []) != now_classes.get(key, []):
            lines.append(f"{key} is {now_classes.get(key, [])} but the run was trained with {rec_classes.get(key, [])}")
    return lines


def restored(info: Any) -> Any:
    """``info`` with the preprocessing and classes of its fingerprint (what training used)."""
    import dataclasses

    fingerprint = info.fingerprint or {}
    pre, classes = fingerprint.get("preprocessing", {}), fingerprint.get("classes", {})
    changes: dict[str, Any] = {}
    for key in ("input_kind", "in_channels", "mean", "std"):
        if key in pre:
            changes[key] = tuple(pre[key]) if key in ("mean", "std") else pre[key]
    if "image_size" in pre:
        changes["image_size"] = tuple(pre["image_size"]) if pre["image_size"] else None
    if "class_names" in classes:
        changes["class_names"] = list(classes["class_names"])
    extra = dict(info.extra)
    if "mask_class_names" in classes:
        extra["mask_class_names"] = list(classes["mask_class_names"])
    return dataclasses.replace(info, extra=extra, **changes)


def legacy(info: Any, name: str | None = None) -> dict[str, Any]:
    """A fingerprint rebuilt from an old run's ``data.json`` (no ``fingerprint``): classes and
    preprocessing only (the pixel rule of that edh is unknown; its splits were not recorded)."""
    pre = preprocessing(info)
    pre.pop("reader")
    return {"format": 0, "dataset": name, "classes": class_lists(info), "preprocessing": pre, "splits": None}

