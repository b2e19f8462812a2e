"""Reading spec YAML safely: one loader (`SpecLoader`) with limits on size, nesting and alias
expansion, for spec files (`read_yaml`) and spec text (`load_yaml_text`, e.g. ``--replace-head``
options). A spec file over `MAX_SPEC_BYTES`, that is not a regular file or not UTF-8, nested deeper
than `MAX_YAML_DEPTH`, whose aliases expand past `MAX_YAML_NODES` values (a "billion laughs" bomb),
with a recursive alias or a key given twice is a `SpecError` naming the file, before anything is
expanded."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from edh.core.errors import SpecError


MAX_SPEC_BYTES = 1 << 20  # a spec file larger than 1 MiB is refused before it is read
MAX_YAML_NODES = 200_000  # values after alias expansion (a YAML "billion laughs" expands to billions)
MAX_YAML_CHARS = 20_000_000  # characters of scalars after alias expansion
MAX_YAML_DEPTH = 100  # nesting of mappings and lists


class _YAMLLimit(Exception):
    pass


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what would blow up after parsing: more than `MAX_YAML_DEPTH`
    levels of nesting (checked while composing), more than `MAX_YAML_NODES` values or `MAX_YAML_CHARS`
    characters once aliases are expanded, recursive aliases, and a key given twice in one mapping
    (YAML would keep the last silently). Counting is done on the composed node graph, where an alias
    is a reference, so a bomb is refused without being expanded."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _YAMLLimit(f"it nests mappings / lists more than {MAX_YAML_DEPTH} levels deep "
                                 f"(line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node) -> None:
    """Expanded size (values, characters), recursion and duplicate keys of a composed YAML document,
    without expanding it: each node's size is computed once and shared by every alias to it."""
    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for child in _children(node):
                child_nodes, child_chars = sizes[id(child)]
                nodes, chars = nodes + child_nodes, chars + child_chars
            if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                line = node.start_mark.line + 1
                raise _YAMLLimit(f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values or "
                                 f"{MAX_YAML_CHARS:,} characters (at line {line}; a YAML 'billion laughs' bomb?). "
                                 "Write the values out, or use fewer aliases")
            sizes[key] = (nodes, chars)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _YAMLLimit(f"an alias at line {node.start_mark.line + 1} refers to a mapping or list that contains "
                             "it (a recursive alias)")
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in sizes:
                stack.append((child, False))


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        line = key_node.start_mark.line + 1
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            raise _YAMLLimit(f"key {key_node.value!r} is given twice in one mapping (lines {seen[ident]} and {line}); "
                             "YAML would keep only the last. Remove one")
        seen[ident] = line


def load_yaml_text(text: str, source: str = "") -> Any:
    """YAML text -> Python data through `SpecLoader` (safe tags only, bombs and duplicate keys refused);
    every problem is a `SpecError` naming ``source`` (a file, or what the text is)."""
    name = source or "the YAML text"
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"{name} holds {len(text):,} characters, more than a spec may ({MAX_SPEC_BYTES:,})")
    loader = None
    try:
        loader = SpecLoader(text)
        loader.name = name  # marks in YAML's messages name the file, not "<unicode string>"
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except _YAMLLimit as error:
        raise SpecError(f"refusing to read {name}: {error}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{name} is not valid YAML: {error}") from None
    except (RecursionError, MemoryError):
        raise SpecError(f"refusing to read {name}: it is nested too deeply or too large to be a spec") from None
    except (TypeError, ValueError) as error:  # e.g. a timestamp out of range
        raise SpecError(f"{name} is not valid YAML: {type(error).__name__}: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_spec_text(path: str | Path) -> str:
    """The text of a spec file: refused (a `SpecError` saying why) when it is missing, a directory, a
    FIFO or another non-regular file (looked at with ``stat``: never opened), larger than
    `MAX_SPEC_BYTES` or not UTF-8."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist{_close_files(path)}") from None
    except OSError as error:
        raise SpecError(f"cannot look at spec file {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(f"spec file {path} is a directory; give the YAML file (a run folder's is {path}/spec.yaml)")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(f"spec file {path} is not a regular file (a named pipe, socket or device); edh reads "
                        "specs only from regular files")
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path} is {info.st_size:,} bytes, more than a spec may be ({MAX_SPEC_BYTES:,}); "
                        "is it the right file?")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError(f"cannot read spec file {path}: {error.strerror or error}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path} is more than {MAX_SPEC_BYTES:,} bytes; is it the right file?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SpecError(f"spec file {path} is not UTF-8 text (byte {raw[error.start]:#04x} at offset "
                        f"{error.start}); save it as UTF-8") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A spec file's mapping, read with every limit of `read_spec_text` and `load_yaml_text`."""
    path = Path(path)
    data = load_yaml_text(read_spec_text(path), str(path))
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping (encoder/heads or model/data/train), not {type(data).__name__}")
    return data


def _close_files(path: Path) -> str:
    """``; did you mean ...?`` naming the files of ``path``'s folder whose names are close to its name
    (`difflib`), or a hint when the folder itself is missing; empty when nothing is close."""
    import difflib

    folder = path.parent
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    except FileNotFoundError:
        return f" (there is no folder {folder})"
    except OSError:
        return ""
    scored = sorted(((difflib.SequenceMatcher(None, path.name, name).ratio(), name) for name in names), reverse=True)
    close = [name for ratio, name in scored[:3] if ratio >= max(0.6, scored[0][0] - 0.1)]
    if not close:
        return ""
    return "; did you mean " + " or ".join(str(folder / name) if str(folder) != "." else name
                                          for name in close) + "?"
