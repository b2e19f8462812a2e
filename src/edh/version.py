__version__ = "0.2.0"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2.3+local"`` -> ``(1, 2, 3)``: the release numbers of a version, to compare with `__version__`."""
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece.split("+")[0] if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
