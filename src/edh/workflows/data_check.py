"""Is the data what the run trained on? One place that answers it for ``edh eval`` and ``edh predict``.

- `check_run_info`: ``data.json``'s own preprocessing and classes (what predict reads) against its
  fingerprint (what training used). A mismatch (an edited ``data.json``) is a `DataError`; with
  ``allow`` a warning, and the run's info goes back to the training values, so predict and eval
  preprocess exactly as training did.
- `evaluation_split`: the data rebuilt from disk against the run's fingerprint (classes, each
  split's files, counts, preprocessing). Any difference is a `DataError` listing them; with
  ``allow`` a warning, and the run's recorded files of the split still on disk are evaluated with
  its classes and preprocessing (datasets of files), or the data as it is now (in-memory datasets).
  A run from before fingerprints: its classes and preprocessing are compared, with a note that its
  splits were not recorded.
"""

from __future__ import annotations

import logging
from typing import Any

from edh.core.errors import DataError
from edh.data import fingerprint as fp

log = logging.getLogger("edh")
ALLOW = "--allow-changed-data"


def _bullets(lines: list[str]) -> str:
    return "".join(f"\n  - {line}" for line in lines)


def check_run_info(run: Any, allow: bool = False) -> None:
    """Refuse (or, with ``allow``, warn about and undo) a ``data.json`` edited after training."""
    lines = fp.info_differences(run.info)
    if not lines:
        return
    where = f"{run.path}/data.json"
    if not allow:
        raise DataError(
            f"{where} was changed after training:{_bullets(lines)}\nedh eval and predict prepare inputs and name "
            f"classes from data.json, so they would no longer match training. Restore {where} (its \"fingerprint\" "
            f"holds the training values), or pass {ALLOW} to use the values the run was trained with."
        )
    log.warning("%s was changed after training:%s\n%s: using the values the run was trained with (its fingerprint)",
                where, _bullets(lines), ALLOW)
    run.info = fp.restored(run.info)
    if hasattr(run.model, "bind_data"):
        run.model.bind_data(run.info)


def rebuild_data(run: Any) -> Any:
    """The run's dataset built again from its spec, with the run's own tokenizer (``tokenizer.json`` in
    its folder) where the dataset takes a ``tokenizer_file``: token ids then mean what they meant in
    training, and no tokenizer is trained again."""
    from pathlib import Path

    from edh.core.builder import option_names
    from edh.core.registry import lookup
    from edh.data.base import build_data

    data = run.spec.data
    options = data.options()
    name = run.info.extra.get("tokenizer_file")
    if name and "tokenizer_file" in option_names(lookup("dataset", data.name, "data.name")):
        options["tokenizer_file"] = str(Path(run.path) / name)
    return build_data(data.name, options, data.seed)


def evaluation_split(run: Any, bundle: Any, split: str, allow: bool = False) -> Any:
    """The dataset to evaluate ``split`` on: ``bundle``'s when the data is what the run trained on;
    otherwise a `DataError` listing the differences, or with ``allow`` a warning and the run's
    recorded samples (`DataBundle.replay`) where the dataset can replay them."""
    recorded = run.info.fingerprint
    now = bundle.info.fingerprint or fp.make(run.spec.data.name, bundle)[0]
    now_lists = fp.sample_lists(bundle)
    recorded_lists = None
    if recorded is None:
        hard, soft = fp.differences(fp.legacy(run.info, run.spec.data.name), now, None, None)
        log.info("note: %s was trained before edh recorded a fingerprint of the data (data.json has none): its "
                 "classes and preprocessing are checked against the data on disk, but not which files were in "
                 "which split. Train it again to record them.", run.path)
    else:
        recorded_lists, note = fp.read_lists(run.path, recorded)
        hard, soft = fp.differences(recorded, now, recorded_lists, now_lists, note)
    for line in soft:
        log.warning("%s: %s", run.path, line)
    dataset = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    if not hard:
        return dataset
    can_replay = recorded is not None and recorded_lists is not None and bundle.replay is not None
    how = (f"the run's recorded {split} files still on disk are evaluated, with its classes and preprocessing"
           if can_replay else f"the {split} split is evaluated as it is on disk now")
    files = f" (the run's files are listed in {run.path}/{recorded['files']})" if recorded_lists is not None else ""
    if not allow:
        raise DataError(
            f"the data on disk is not what run {run.path} was trained on:{_bullets(hard)}\nIts metrics would be "
            f"wrong or optimistic. Restore the data{files}, or pass {ALLOW} to evaluate anyway ({how})."
        )
    if can_replay:
        ids = recorded_lists[split]
        dataset = bundle.replay(ids, run.info)
        how += f": {len(dataset)} of {len(ids)}"
    log.warning("the data on disk is not what run %s was trained on:%s\n%s: %s", run.path, _bullets(hard), ALLOW, how)
    return dataset
