"""Third-party components plug in through entry points: the example package in tests/plugins
(``edh-plugin-demo``: a ``multilabel`` head and a ``digit-collage`` dataset) goes through every
command with no edit to edh, and broken or clashing plug-ins are errors that name the packages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import edh_in_process

PLUGINS = Path(__file__).parent / "plugins"


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "Agg")
    return env


# ---- the registry's tables, saved and restored around in-process tests -------------------------------
@pytest.fixture
def registry_state(monkeypatch):
    """The registry as it was, restored afterwards; entry points are scanned again inside the test
    (so plug-ins put on ``sys.path`` here are found), and plug-in modules imported here are forgotten."""
    from edh.core import registry

    for package in registry._PACKAGES.values():  # built-ins first, as on a first use
        __import__(package)
    saved = ({r: dict(t) for r, t in registry._REGISTRY.items()}, {r: dict(t) for r, t in registry._OWNERS.items()},
             set(registry._PLUGINS_SCANNED), set(registry._LOADED_ENTRY_POINTS))
    modules = set(sys.modules)
    registry._PLUGINS_SCANNED.clear()
    yield registry
    for role in registry.ROLES:
        registry._REGISTRY[role].clear()
        registry._REGISTRY[role].update(saved[0][role])
        registry._OWNERS[role].clear()
        registry._OWNERS[role].update(saved[1][role])
    registry._PLUGINS_SCANNED.clear()
    registry._PLUGINS_SCANNED.update(saved[2])
    registry._LOADED_ENTRY_POINTS.clear()
    registry._LOADED_ENTRY_POINTS.update(saved[3])
    for name in set(sys.modules) - modules:
        if name.startswith("edh_plugin"):
            del sys.modules[name]


def make_plugin(root: Path, dist: str, entry_points: str, modules: dict[str, str]) -> Path:
    """An installed-looking distribution under ``root``: ``<name>-0.1.dist-info`` and its modules."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for path, text in modules.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


HEAD_MODULE = """
from edh.core.registry import register_head
from edh.heads.base import Head

@register_head({name!r})
class {cls}(Head):
    '''A head that only exists to take a name.'''
"""


def test_plugin_head_named_like_a_builtin_is_an_error_naming_both_packages(registry_state, tmp_path, monkeypatch):
    make_plugin(tmp_path, "edh-plugin-clash", "[edh.heads]\nclash = edh_plugin_clash\n",
                {"edh_plugin_clash.py": HEAD_MODULE.format(name="classification", cls="Clash")})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = registry_state
    for _ in range(2):  # the same error on every use, not only the first
        with pytest.raises(registry.ComponentClashError,
                           match="head 'classification' is registered by edh and by edh-plugin-clash") as error:
            registry.names("head")
        assert "edh.heads.classification.ClassificationHead" in str(error.value)
        assert "edh_plugin_clash.Clash" in str(error.value)
    assert registry._REGISTRY["head"]["classification"].__module__ == "edh.heads.classification"  # built-in kept
    assert registry.names("encoder")  # other roles are unaffected


def test_two_plugins_registering_one_name_is_an_error_naming_both(registry_state, tmp_path, monkeypatch):
    for dist in ("edh-plugin-twin-a", "edh-plugin-twin-b"):
        module = dist.replace("-", "_")
        make_plugin(tmp_path, dist, f"[edh.heads]\ntwin = {module}\n",
                    {f"{module}.py": HEAD_MODULE.format(name="twin", cls="Twin")})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = registry_state
    with pytest.raises(registry.ComponentClashError,
                       match="head 'twin' is registered by edh-plugin-twin-a and by edh-plugin-twin-b"):
        registry.lookup("head", "twin")
    assert registry._OWNERS["head"]["twin"] == "edh-plugin-twin-a"  # the first one loaded keeps the name


def test_plugin_that_fails_to_import_names_its_entry_point_and_distribution(registry_state, tmp_path, monkeypatch):
    broken = HEAD_MODULE.format(name="half", cls="Half") + "\nimport edh_no_such_module_xyz  # noqa\n"
    make_plugin(tmp_path, "edh-plugin-broken", "[edh.heads]\nbroken = edh_plugin_broken.heads\n",
                {"edh_plugin_broken/__init__.py": "", "edh_plugin_broken/heads.py": broken})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = registry_state
    for _ in range(2):  # fails again on the next use: nothing half-registered is left behind
        with pytest.raises(registry.PluginLoadError) as error:
            registry.lookup("head", "classification")
        message = str(error.value)
        assert "entry point 'broken'" in message and "edh_plugin_broken.heads" in message
        assert "edh-plugin-broken" in message and "ModuleNotFoundError" in message
        assert "edh_no_such_module_xyz" in message
        assert isinstance(error.value.__cause__, ModuleNotFoundError)
        assert isinstance(error.value, ImportError) and isinstance(error.value, ValueError)
        assert error.value.distribution == "edh-plugin-broken"
        assert "half" not in registry._REGISTRY["head"]


def test_command_line_reports_a_broken_plugin_in_one_paragraph(registry_state, tmp_path, monkeypatch):
    make_plugin(tmp_path, "edh-plugin-broken", "[edh.datasets]\nbroken = edh_plugin_broken_data\n",
                {"edh_plugin_broken_data.py": "raise RuntimeError('the plug-in is broken on purpose')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))  # found by its entry point, scanned again (registry_state)
    result = edh_in_process("list", "datasets", check=False)  # edh.cli.main in this process
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("edh list: error: plug-in entry point 'broken'")
    assert "edh-plugin-broken" in result.stderr and "RuntimeError: the plug-in is broken on purpose" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_edh_scans_no_entry_points_until_a_registry_is_used():
    code = ("import json, sys, edh, edh.cli, edh.core.registry as r\n"
            "loaded = lambda: sorted(m for m in sys.modules if m.startswith('edh_plugin_demo'))\n"
            "before = loaded()\n"
            "heads = r.names('head')\n"
            "print(json.dumps([before, 'multilabel' in heads, r.owner('head', 'multilabel'),"
            " r.owner('head', 'classification'), loaded()]))\n")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            env=_env(PLUGINS), timeout=120)
    before, found, plugin_owner, builtin_owner, after = json.loads(result.stdout)
    assert before == [] and found and plugin_owner == "edh-plugin-demo" and builtin_owner == "edh"
    assert after == ["edh_plugin_demo", "edh_plugin_demo.heads"]  # the dataset module waits for the dataset registry


def test_demo_head_follows_the_contract(registry_state, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    import edh

    model = edh.build(encoder={"name": "conv", "in_channels": 1, "channels": [8, 16]},
                      heads={"tags": {"type": "multilabel", "num_labels": 3, "label_names": ["a", "b", "c"],
                                      "threshold": 0.5}}, pretrained=False).eval()
    head = model.heads["tags"]
    assert registry_state.owner("head", "multilabel") == "edh-plugin-demo"
    logits = model(torch.randn(4, 1, 16, 16))["tags"]
    assert logits.shape == (4, 3)
    targets = torch.tensor([[1.0, 0.0, -1.0]] * 4)  # -1: unknown, left out of the loss
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], targets[:, :2])
    assert torch.allclose(head.loss(logits, targets)["bce"], expected)
    fixed = torch.tensor([[3.0, -3.0, 1.0], [-3.0, -2.0, -1.0]])
    prediction = head.predict(fixed)
    assert prediction["labels"] == [["a", "c"], []]
    assert head.format_prediction(prediction, 0) == "a 0.953, c 0.731"
    assert head.format_prediction(prediction, 1).startswith("(none at threshold 0.5; most probable c 0.269")
    assert head.predict(fixed, top_k=1)["labels"][0] == ["a"]
    from_graph = head.from_postprocessed(head.postprocess(fixed), batch_size=2)  # as `edh export --nms` reads it back
    assert from_graph["labels"] == prediction["labels"]
    eager, exported = head.align_predictions(prediction, from_graph)
    assert list(eager) == ["probs"] and torch.equal(eager["probs"], exported["probs"])
    metrics = head.make_metrics("test")
    head.update_metrics(metrics, fixed, torch.tensor([[1, 0, 1], [0, 0, 0]]))
    scalars, lines = head.summarize(metrics.compute())
    assert scalars["exact_match"] == 1.0 and lines[0].split() == ["label", "f1", "precision", "recall"]
    renamed = edh.build(encoder={"name": "conv", "in_channels": 1, "channels": [8, 16]},
                        heads={"tags": {"type": "multilabel", "num_labels": 3, "label_names": ["c", "a", "new"]}},
                        pretrained=False).heads["tags"]
    assert renamed.transfer_from(head) == "2 of 3 labels kept by name; new: new"
    assert torch.equal(renamed.fc.weight[0], head.fc.weight[2]) and torch.equal(renamed.fc.weight[1], head.fc.weight[0])


# ---- every command on the plug-in's head and dataset ----------------------------------------------------
def _collage_png(path: Path) -> Path:
    """A 16x16 picture with a real 3 top left and a real 7 bottom right."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    image = np.zeros((16, 16))
    image[:8, :8] = digits.images[np.flatnonzero(digits.target == 3)[0]] / 16
    image[8:, 8:] = digits.images[np.flatnonzero(digits.target == 7)[0]] / 16
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.slow
def test_plugin_head_and_dataset_through_every_command(registry_state, tmp_path, monkeypatch):
    # in this process (edh.cli.main, no fresh interpreter per command): the plug-in found on sys.path by
    # its entry points as a new process finds it (registry_state scans them again); a real process
    # finding it is test_import_edh_scans_no_entry_points_until_a_registry_is_used
    monkeypatch.syspath_prepend(str(PLUGINS))
    spec = {
        "model": {"encoder": {"name": "conv", "channels": [16, 32]},
                  "heads": {"digits": {"type": "multilabel", "pool": "max", "pos_weight": 3.0}}},
        "data": {"name": "digit-collage", "samples": 1200, "batch_size": 32},
        "train": {"epochs": 3, "lr": 0.01, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    run, png = tmp_path / "run", _collage_png(tmp_path / "three_seven.png")

    catalog = json.loads(edh_in_process("list", "--json").stdout)
    edh_in_process("train", tmp_path / "run.yaml", "--out", run)
    commands = {"export": ["export", run], "eval": ["eval", run],
                "predict": ["predict", run, png, "--out", tmp_path / "pred"], "describe": ["describe", run, "--json"],
                "diagram": ["diagram", run, "--out", tmp_path / "model.svg"]}
    out = {name: edh_in_process(*argv).stdout for name, argv in commands.items()}

    head = next(r for r in catalog["heads"] if r["name"] == "multilabel")
    assert "conv" in head["fits"] and {"num_labels", "label_names", "threshold"} <= set(head["options"])
    dataset = next(r for r in catalog["datasets"] if r["name"] == "digit-collage")
    assert {"samples", "max_digits"} <= set(dataset["options"])

    resolved = yaml.safe_load((run / "spec.yaml").read_text())["model"]["heads"]["digits"]
    assert resolved["num_labels"] == 10 and resolved["label_names"] == [str(i) for i in range(10)]  # from the data
    assert "val/digits/f1" in (run / "metrics.csv").read_text().splitlines()[0]

    f1 = float(re.search(r"\bf1=([0-9.]+)", out["eval"]).group(1))
    assert f1 > 0.3, out["eval"]
    assert "exact_match=" in out["eval"] and re.search(r"^\s+7\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+$", out["eval"], re.M)

    line = out["predict"].splitlines()[0]
    assert line.startswith(f"{png}\tdigits: ")
    records = json.loads((tmp_path / "pred" / "digits.json").read_text())
    assert records[0]["file"] == str(png) and set(records[0]["probs"]) == {str(i) for i in range(10)}
    assert (tmp_path / "pred" / "three_seven_multilabel.png").is_file()

    report = out["export"].strip().splitlines()
    assert report[0] == f"wrote {run / 'model.onnx'}" and report[1].split()[:2] == ["digits", "(3,"]
    assert float(report[-1].rsplit(" ", 1)[1]) < 1e-4  # onnxruntime vs eager PyTorch, checked by edh export

    rows = json.loads(out["describe"])["rows"]
    head_row = next(r for r in rows if r["role"] == "Head:digits")
    assert head_row["component"] == "multilabel" and head_row["output"] == ["(1, 10)"]
    assert head_row["function"] == "global pooling + linear to one sigmoid score per label"
    svg = (tmp_path / "model.svg").read_text()
    assert "<svg" in svg and "multilabel" in svg
