"""README.md's data table names every registered dataset, and its finetune example starts from the
folder that its ``edh train`` writes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _data_table_names(text: str) -> set[str]:
    """The backticked names in the first column of the table under ``## Data`` (``| name | what |...``)."""
    section = text.split("\n## Data", 1)[1].split("\n## ", 1)[0]
    header = section.index("| name | what |")
    names: set[str] = set()
    for line in section[header:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_the_data_table_lists_every_registered_dataset():
    from edh.core import registry

    listed = _data_table_names(_readme())
    missing = sorted(set(registry.names("dataset")) - listed)
    assert not missing, f"README.md's data table (## Data) lacks the datasets {missing}: add a row for each"


def test_the_finetune_example_starts_from_the_folder_edh_train_writes():
    text = _readme()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "edh finetune" in b]
    assert blocks, "README.md has no edh finetune example"
    for block in blocks:
        commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
        trained = {f"runs/{Path(words[2]).stem}" for words in commands if words[:2] == ["edh", "train"]}
        for words in commands:
            if words[:2] == ["edh", "finetune"]:
                assert words[2] in trained, f"edh finetune {words[2]}: the block's edh train writes {trained}"
        for config in trained:
            assert (ROOT / "configs" / f"{Path(config).name}.yaml").is_file()
