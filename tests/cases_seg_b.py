"""Role cases of the segmentation decoders in this family (merged into `roles.TINY`)."""

from __future__ import annotations

from roles import Case  # noqa: F401

CASES: dict = {}
