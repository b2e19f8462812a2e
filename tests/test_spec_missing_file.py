"""A spec path that does not exist: the message names the close matches in its folder."""

from __future__ import annotations

import pytest

from edh.core.errors import SpecError


def test_a_misspelt_spec_path_gets_close_matches(tmp_path):
    from edh.core.spec import load_spec

    (tmp_path / "digits-resnet18.yaml").write_text("encoder: {name: conv}\n")
    (tmp_path / "unet-scenes.yaml").write_text("encoder: {name: conv}\n")
    with pytest.raises(SpecError, match=r"did you mean .*digits-resnet18\.yaml\?$") as error:
        load_spec(tmp_path / "digit-resnet18.yaml")
    assert "unet-scenes" not in str(error.value)
    with pytest.raises(SpecError) as error:
        load_spec(tmp_path / "zzzz.yaml")
    assert "does not exist" in str(error.value) and "did you mean" not in str(error.value)
    with pytest.raises(SpecError, match="there is no folder"):
        load_spec(tmp_path / "nowhere" / "digits-resnet18.yaml")


def test_edh_train_names_the_close_config(cli, capsys):
    assert cli(["train", "configs/digit-resnet18.yaml"]) == 2
    assert "did you mean configs/digits-resnet18.yaml?" in capsys.readouterr().err
