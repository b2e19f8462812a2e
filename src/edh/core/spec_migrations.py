"""Reading specs written by an older edh: head types renamed between releases (`RENAMED_HEADS`)."""

from __future__ import annotations

import logging
from typing import Any

from edh.version import version_tuple

log = logging.getLogger("edh")

# Head types whose meaning changed: ``{old name: (the first edh version of the new meaning, the old
# meaning's name now)}``. A spec written by an older edh (its ``edh_version``, as every run folder's
# spec has) is read with the new name, so old runs keep loading; a spec without a version is current.
RENAMED_HEADS: dict[str, tuple[tuple[int, ...], str]] = {"yolo": ((0, 2, 0), "fcos")}


def migrate_heads(data: Any) -> Any:
    """``data`` (a run spec mapping) with the head types of `RENAMED_HEADS` renamed where its
    ``edh_version`` predates the change, each rename logged; anything else is returned as it is."""
    if not isinstance(data, dict) or "edh_version" not in data or not isinstance(data.get("model"), dict):
        return data
    heads = data["model"].get("heads")
    if not isinstance(heads, dict):
        return data
    written = version_tuple(str(data["edh_version"]))
    renamed = {}
    for name, head in heads.items():
        old = head.get("type") if isinstance(head, dict) else None
        if isinstance(old, str) and old in RENAMED_HEADS and written < RENAMED_HEADS[old][0]:
            renamed[name] = {**head, "type": RENAMED_HEADS[old][1]}
            log.warning("head %r: a spec written by edh %s with type '%s' is read as type '%s' (renamed in edh %s); "
                        "write type: %s to silence this", name, data["edh_version"], old, RENAMED_HEADS[old][1],
                        ".".join(map(str, RENAMED_HEADS[old][0])), RENAMED_HEADS[old][1])
    if not renamed:
        return data
    return {**data, "model": {**data["model"], "heads": {**heads, **renamed}}}
