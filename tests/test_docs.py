"""The code blocks of the documentation work as written: ``README.md`` and every ``docs/*.md`` (found
when the tests are collected, so a new page is checked without an edit here). One test per block,
named by ``file:line`` of its opening fence.

- ```` ```python ````: run, each block in a fresh namespace, with a fresh temporary folder as the
  working directory. That folder holds links to the repository's ``configs`` and ``src``, so a path
  such as ``configs/unet-scenes.yaml`` resolves as it does from the repository root, while the files a
  block writes (``runs/...``) stay in the temporary folder. ``REPO_ROOT`` (environment variable) names
  the repository root for a block that needs anything else of it. Components a block registers are
  forgotten after it (``registry_snapshot``).
- ```` ```bash ```` / ```` ```sh ```` / ```` ```console ````: each command line that starts with ``edh ``
  (after an optional ``$ `` prompt or ``VAR=value`` settings) is parsed by edh's own argument parser
  (nothing runs), and each ``configs/*.yaml`` or ``src/edh/configs/*.yaml`` it names must exist.
- ```` ```yaml ````: parsed by edh's YAML loader; a whole run spec (``model`` and ``data``) must pass
  `parse_run_spec`, and a model spec (``encoder``), or a run spec's ``model`` part, `parse_model_spec`.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SHELLS = ("bash", "sh", "shell", "console")
CONFIG_PATH = re.compile(r"(?<![\w/.-])((?:src/edh/)?configs/[\w.-]+\.ya?ml)\b")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(languages: tuple[str, ...]) -> list:
    """``pytest.param(code, id="docs/x.md:LINE")`` for each fenced block in one of ``languages``."""
    found = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1).lower() in languages:
                line = text.count("\n", 0, match.start()) + 1
                found.append(pytest.param(match.group(2), id=f"{path.relative_to(ROOT)}:{line}"))
    return found


# ---- python ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", blocks(("python", "py")))
def test_python_block_runs(code, request, tmp_path, monkeypatch, registry_snapshot):
    import torch

    torch.set_num_threads(1)
    for name in ("configs", "src"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPO_ROOT", str(ROOT))
    torch.manual_seed(0)
    where = request.node.callspec.id
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})  # noqa: S102 - the docs' own examples


# ---- shell -----------------------------------------------------------------------------------------
def edh_commands(code: str) -> list[list[str]]:
    """The ``edh ...`` command lines of a shell block as argument lists (continuations joined, comments,
    prompts, leading ``VAR=value`` settings and anything after a pipe or ``&&`` left out)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
        except ValueError:
            continue
        while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            words = words[1:]
        if not words or words[0] != "edh":
            continue
        for index, word in enumerate(words):
            if word in ("|", "||", "&&", ";", ">", ">>", "<", "&", "2>"):
                words = words[:index]
                break
        commands.append(words[1:])
    return commands


def parse_cli(argv: list[str]) -> None:
    """Parse ``argv`` as ``edh.cli.main`` does (items after options allowed) without running it;
    an argparse error is an AssertionError with its message."""
    from edh.cli import build_parser

    parser = build_parser()
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            args, extras = parser.parse_known_args(argv)
            if extras and not (getattr(args, "items_dest", None) and not any(e.startswith("-") for e in extras)):
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as stop:
        if stop.code not in (0, None):  # --help / --version exit 0
            raise AssertionError(f"`edh {shlex.join(argv)}` does not parse: {errors.getvalue().strip()}") from None


@pytest.mark.parametrize("code", blocks(SHELLS))
def test_shell_block_edh_lines_parse_and_name_existing_configs(code):
    for argv in edh_commands(code):
        parse_cli(argv)
        for config in CONFIG_PATH.findall(" ".join(argv)):
            assert (ROOT / config).is_file(), f"`edh {shlex.join(argv)}` names {config}, which does not exist"


# ---- yaml ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", blocks(("yaml", "yml")))
def test_yaml_block_parses_and_specs_validate(code, request):
    from edh.core.spec import parse_model_spec, parse_run_spec
    from edh.core.spec_yaml import load_yaml_text

    where = request.node.callspec.id
    for data in yaml_documents(code, where, load_yaml_text):
        if not isinstance(data, dict):
            continue
        if "model" in data and "data" in data:
            parse_run_spec(data, where)
        elif isinstance(data.get("model"), dict) and "encoder" in data["model"]:
            parse_model_spec(data["model"], where)
        elif "encoder" in data:
            parse_model_spec(data, where)


def yaml_documents(code: str, where: str, load) -> list:
    """The YAML a block holds: one document, or, for a block whose lines all set the same top-level key
    (alternatives side by side: ``trainer: {...}`` per line), each line on its own."""
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    keys = {line.split(":", 1)[0] for line in lines if not line[0].isspace()}
    if len(lines) > 1 and len(keys) == 1 and all(not line[0].isspace() for line in lines):
        return [load(line, f"{where} line {index}") for index, line in enumerate(lines, 1)]
    return [load(code, where)]


# ---- the checker itself ----------------------------------------------------------------------------
def test_shell_lines_are_split_as_a_shell_would():
    code = "$ edh predict runs/a x.png \\\n  --tile 64  # a comment\nPYTHONPATH=p edh list heads | head\nls edh\n"
    assert edh_commands(code) == [["predict", "runs/a", "x.png", "--tile", "64"], ["list", "heads"]]
    with pytest.raises(AssertionError, match="does not parse"):
        parse_cli(["predict", "runs/a", "--no-such-option"])
    parse_cli(["predict", "runs/a", "--top-k", "3", "a.png"])  # items after an option, as edh.cli.main takes them
    assert CONFIG_PATH.findall("edh train configs/a.yaml src/edh/configs/b.yaml x/configs/c.yaml") == \
        ["configs/a.yaml", "src/edh/configs/b.yaml"]
    assert os.fspath(ROOT / "README.md") in map(os.fspath, doc_files())
    from edh.core.spec_yaml import load_yaml_text

    alternatives = "trainer: {devices: 2}   # one\ntrainer: {devices: 4}\n"
    assert yaml_documents(alternatives, "x", load_yaml_text) == [{"trainer": {"devices": 2}}, {"trainer": {"devices": 4}}]
    assert yaml_documents("a: 1\nb: {c: 2}\n", "x", load_yaml_text) == [{"a": 1, "b": {"c": 2}}]
