"""Tiny role-test cases (merged into tests/roles.py TINY)."""

CASES: dict = {}
