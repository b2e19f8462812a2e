"""``edh finetune`` with a head of other classes: the README's example works; a head with fewer
classes than the run's data is a clear error before training, not an IndexError mid-epoch."""

from __future__ import annotations

import pytest
import yaml

from conftest import tiny_run_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    spec = tiny_run_spec(epochs=1)
    spec["model"]["encoder"]["channels"] = [4, 8]
    run = tmp_path_factory.mktemp("runs") / "digits"
    train_run(parse_run_spec(spec), run, max_steps=2)
    return run


def test_a_new_head_with_the_datas_classes_trains(trained, tmp_path, cli, capsys):
    out = tmp_path / "new-head"
    assert cli(["finetune", str(trained), "--replace-head", "label:classification:dropout=0.2,label_smoothing=0.1",
                "--freeze", "encoder", "--lr", "heads=1e-3", "--epochs", "1", "--out", str(out)]) == 0
    head = yaml.safe_load((out / "spec.yaml").read_text())["model"]["heads"]["label"]
    assert head["dropout"] == 0.2 and head["num_classes"] == 10


def test_fewer_classes_than_the_data_is_a_clear_error(trained, tmp_path, cli, capsys):
    out = tmp_path / "five"
    code = cli(["finetune", str(trained), "--replace-head",
                "label:classification:num_classes=5,class_names=['0','1','2','3','x']", "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2, error
    assert "IndexError" not in error and "Traceback" not in error
    assert "head 'label' has 5 classes, but the run's data ('digits') has 10" in error
    assert "--spec NEW.yaml" in error and "num_classes=10" in error
    assert not (out / "model.safetensors").exists()


def test_unquoted_numeric_class_names_are_refused(trained, tmp_path, cli, capsys):
    assert cli(["finetune", str(trained), "--replace-head", "label:classification:num_classes=5,class_names=[0,1,x]",
                "--out", str(tmp_path / "bad")]) == 2
    assert "class_names" in capsys.readouterr().err


def test_the_python_api_raises_a_class_count_error(trained, tmp_path):
    from edh.core.spec import parse_run_spec
    from edh.heads.data_checks import ClassCountError
    from edh.train.runner import train_run

    spec = tiny_run_spec(epochs=1)
    spec["model"]["heads"]["label"]["num_classes"] = 3
    with pytest.raises(ClassCountError) as error:
        train_run(parse_run_spec(spec), tmp_path / "three", max_steps=1)
    assert (error.value.have, error.value.need, error.value.key) == (3, 10, "label")
