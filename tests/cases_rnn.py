"""Role-tester cases (`tests/roles.py` TINY) of the rnn components; merged into TINY by roles.py."""

from __future__ import annotations

from roles import Case  # noqa: F401  (roles.py imports this module at its end, once Case exists)

CASES: dict = {}
