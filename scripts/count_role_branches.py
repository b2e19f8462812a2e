"""Count the places outside the role folders that branch on which component a model has.

Usage: python scripts/count_role_branches.py [SRC_DIR] [--list]

A workflow that calls the role contracts (``heads/base.py``, ``decoders/base.py``) needs none of
these; each one found is a place a new encoder, decoder or head family would have to edit:

- ``isinstance(x, <...Head|...Decoder|...Encoder>)`` on a concrete component class;
- ``hasattr`` / ``getattr`` on a head, decoder, encoder or builder (probing for an attribute the
  contract does not declare);
- a condition on a model having no heads (``not model.heads``), i.e. special-casing the autoencoder;
- a condition comparing with a component or task name (``"detection"``, ``"yolo"``, ``"lm"``...);
- calls of family predicates (``is_seq2seq``, ``is_detection``, ``is_batched``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROLE_DIRS = {"encoders", "decoders", "heads"}
ROLE_WORDS = ("head", "decoder", "encoder", "builder", "lm")
FAMILY_NAMES = {"detection", "yolo", "fcos", "faster_rcnn", "rpn", "lm", "classification", "segmentation",
                "regression", "transformer", "conv_transpose", "unet", "fpn", "resnet", "timm", "generation",
                "image", "tokens", "audio"}  # the last three: input kinds (a new modality would extend them)
PREDICATES = {"is_seq2seq", "is_detection", "is_batched"}
CONCRETE = ("Head", "Decoder", "Encoder")
CONTRACTS = {"Head", "Decoder", "Encoder", "StepDecoder"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _name(node.value) + "." + node.attr
    if isinstance(node, ast.Call):
        return _name(node.func) + "()"
    if isinstance(node, ast.Subscript):
        return _name(node.value) + "[]"
    return ""


def _role_like(node: ast.AST) -> bool:
    text = _name(node).lower()
    return any(word in text.split(".")[-1] or word in text for word in ROLE_WORDS)


def findings(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            func = node.func.id
            if func == "isinstance" and len(node.args) == 2:
                classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for cls in classes:
                    name = _name(cls).split(".")[-1]
                    if name.endswith(CONCRETE) and name not in CONTRACTS:
                        out.append((node.lineno, f"isinstance(..., {name})"))
            elif func in ("hasattr", "getattr") and node.args and _role_like(node.args[0]):
                attr = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else "?"
                out.append((node.lineno, f"{func}({_name(node.args[0])}, {attr!r})"))
            elif func in PREDICATES:
                out.append((node.lineno, f"{func}(...)"))
        if isinstance(node, (ast.If, ast.IfExp, ast.While, ast.Assert)) or (
                isinstance(node, ast.BoolOp)):
            test = node.test if hasattr(node, "test") else node
            for sub in ast.walk(test):
                if isinstance(sub, ast.UnaryOp) and isinstance(sub.op, ast.Not) and _name(sub.operand).endswith(".heads"):
                    out.append((sub.lineno, f"not {_name(sub.operand)}"))
                if isinstance(sub, ast.Compare):
                    for value in [sub.left, *sub.comparators]:
                        if isinstance(value, ast.Constant) and value.value in FAMILY_NAMES:
                            out.append((sub.lineno, f"compares with {value.value!r}"))
    return sorted(set(out))


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    root = Path(args[0] if args else Path(__file__).resolve().parents[1] / "src" / "edh")
    total = 0
    for path in sorted(root.rglob("*.py")):
        if ROLE_DIRS & set(path.relative_to(root).parts[:-1]):
            continue
        found = findings(ast.parse(path.read_text()))
        total += len(found)
        if "--list" in argv:
            for line, what in found:
                print(f"{path.relative_to(root)}:{line}: {what}")
    print(f"{total} branches on component type outside {', '.join(sorted(ROLE_DIRS))}/ in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
