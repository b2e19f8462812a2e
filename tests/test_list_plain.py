"""``edh list ROLE`` is plain text: no reStructuredText backticks, each option's type, default and meaning."""

from __future__ import annotations

import json


def test_list_datasets_and_heads_show_plain_text_with_option_meanings(cli, capsys):
    assert cli(["list", "datasets"]) == 0
    datasets = capsys.readouterr().out
    assert "`" not in datasets and "module docstring" not in datasets
    assert "  coco: A COCO detection set.\n" in datasets
    assert "      images (str): folder of the images named in annotations.\n" in datasets
    assert "      strict (bool = False): refuse annotation files" in datasets
    assert "      val_fraction (float = 0.1)\n" in datasets  # described nowhere: type and default only
    assert cli(["list", "heads"]) == 0
    heads = capsys.readouterr().out
    assert "`" not in heads
    assert "      num_classes (int): number of classes.\n" in heads
    assert "    fits: " in heads and "resnet18" in heads


def test_the_json_catalog_keeps_options_and_adds_their_meaning(cli, capsys):
    assert cli(["list", "datasets", "--json"]) == 0
    coco = next(row for row in json.loads(capsys.readouterr().out)["datasets"] if row["name"] == "coco")
    assert coco["options"]["val_fraction"] == "float = 0.1"
    assert coco["option_help"]["val_images"] == coco["option_help"]["val_annotations"]  # "a, b: text"
    assert "`" not in json.dumps(coco)


def test_plain_text_and_the_args_section():
    from edh.inspection.catalog import option_help, plain_text

    assert plain_text("a ``x`` and `y` and :func:`z`") == "a x and y and z"

    def builder(size: int = 3, a: int = 0, b: int = 0):
        """Make things.

        Args:
            size: how big (in ``pixels``),
                continued here.
            a, b: both of them.

        Returns:
            nothing: not an option.
        """

    assert option_help(builder) == {"size": "how big (in pixels), continued here.", "a": "both of them.",
                                    "b": "both of them."}
