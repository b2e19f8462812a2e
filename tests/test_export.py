"""ONNX export of every family, checked against eager PyTorch with onnxruntime, and predict over it.

Runs are built in memory from a run spec (data info resolved, untrained weights, BatchNorm
statistics randomised so folding is not a no-op) and saved as real run folders, so each export
takes seconds rather than a training run.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from edh.export.flatten import flatten, unflatten
from edh.export.onnx import ExportCheckError, ExportError, OnnxGraph, check_graph, export_graph
from edh.export.runs import export_run, onnx_run

SCENES = {"name": "scenes", "image_size": 64, "num_train": 8, "num_val": 4, "num_test": 8, "batch_size": 4}
DIGITS = {"name": "digits", "image_size": 16, "batch_size": 16}
PYRAMID = {"encoder": {"name": "test_resnet"},
           "decoder": {"name": "fpn", "out_channels": 16, "levels": [2, 3, 4], "extra": "none"}}
SPECS = {
    "classifier": {"model": {"encoder": {"name": "conv", "channels": [8, 16]},
                             "heads": {"label": {"type": "classification"},
                                       "again": {"type": "classification", "target": "label"}}}, "data": DIGITS},
    "unet": {"model": {"encoder": {"name": "test_resnet"},
                       "decoder": {"name": "unet", "decoder_channels": [16, 16, 8, 8, 8]},
                       "heads": {"mask": {"type": "segmentation", "source": "decoder"}}}, "data": SCENES},
    "autoencoder": {"model": {"encoder": {"name": "conv", "channels": [8, 16]}, "decoder": {"name": "conv_transpose"}},
                    "data": DIGITS},
    "vae": {"model": {"encoder": {"name": "conv", "channels": [8, 16]},
                      "decoder": {"name": "conv_transpose", "latent_dim": 4, "variational": True, "image_size": 16}},
            "data": DIGITS},
    "fcos": {"model": {**PYRAMID, "heads": {"boxes": {"type": "fcos", "source": "decoder", "target": "boxes",
                                                      "num_convs": 1, "norm": "batch", "score_thresh": 0.3,
                                                      "num_classes": 10}}},
             "data": SCENES},
    "faster_rcnn": {"model": {**PYRAMID, "heads": {"boxes": {"type": "faster_rcnn", "source": "decoder",
                                                             "target": "boxes", "representation_size": 32,
                                                             "num_classes": 10}}},
                    "data": SCENES},
    # nms_thresh: boxes clipped to the border can overlap at exactly IoU 0.6, where onnxruntime's
    # NonMaxSuppression (float threshold) and torchvision's nms (double) decide differently
    "fcos+rpn": {"model": {**PYRAMID, "heads": {
        "boxes": {"type": "fcos", "source": "decoder", "target": "boxes", "num_convs": 1, "norm": "batch",
                  "score_thresh": 0.3, "num_classes": 10, "nms_thresh": 0.583},
        "proposals": {"type": "rpn", "source": "decoder", "target": "boxes", "anchor_sizes": [[16], [32], [64]]}}},
        "data": SCENES},
    "translator": {"model": {"encoder": {"name": "transformer", "preset": "tiny", "d_model": 32, "num_layers": 2,
                                         "num_heads": 4, "ffn_dim": 64},
                             "decoder": {"name": "transformer", "preset": "tiny", "d_model": 32, "num_layers": 2,
                                         "num_heads": 4, "ffn_dim": 64},
                             "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
                   "data": {"name": "numbers", "max_number": 200, "vocab_size": 100, "batch_size": 16}},
}


def make_run(spec: dict, path: Path, seed: int = 0):
    """A run folder for ``spec`` with untrained weights (no training): spec, data info, weights."""
    from edh.data.base import build_data
    from edh.utils.io import atomic_write_text
    from edh.core.model import Model
    from edh.workflows.run import load_run, save_weights, write_spec
    from edh.core.spec import parse_run_spec
    from edh.train.resolve import resolve_spec

    path.mkdir(parents=True, exist_ok=True)
    spec = parse_run_spec({**spec, "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}})
    bundle = build_data(spec.data.name, spec.data.options(), spec.data.seed)
    spec = resolve_spec(spec, bundle.info)
    torch.manual_seed(seed)
    model = Model(spec.model, pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if type(module).__name__ == "FCOSHead":  # spread the scores: an untrained head ties them all
                for conv in (module.cls_logits, module.bbox_reg, module.bbox_ctrness):
                    torch.nn.init.normal_(conv.weight, std=0.3)
                    torch.nn.init.normal_(conv.bias, std=1.0)
    write_spec(path, spec, bundle.info)
    save_weights(path, model)
    for name, text in bundle.files.items():
        atomic_write_text(path / name, text)
    return load_run(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = make_run(SPECS[name], root / name)
        return cache[name]

    return get


def _ops(path: Path) -> set[str]:
    """Every op type in the graph, sub-graphs (If / Loop branches) included."""
    found: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.g.node:
                    walk(attribute.g)

    walk(onnx.load(str(path)).graph)
    return found


# ---- the generic machinery --------------------------------------------------------------------------
Pair = namedtuple("Pair", "left right")


@dataclass
class Grid:
    points: torch.Tensor
    strides: torch.Tensor


def test_flatten_names_every_tensor_and_round_trips():
    tree = {"label": torch.ones(2, 3), "det": {"maps": [torch.zeros(2, 1), torch.zeros(2, 2)], "size": (64, 64),
                                               "none": None}, "pair": Pair(torch.ones(1), torch.zeros(1))}
    names, tensors, layout = flatten(tree)
    assert names == ["label", "det.maps.0", "det.maps.1", "pair.left", "pair.right"]
    rebuilt = unflatten(layout, tensors)
    assert rebuilt["det"]["size"] == (64, 64) and rebuilt["det"]["none"] is None
    assert type(rebuilt["pair"]).__name__ == "Pair" and rebuilt["pair"].right is tensors[4]
    assert rebuilt["label"] is tensors[0]
    from edh.core.features import Sequence

    names, tensors, layout = flatten({"grid": Grid(torch.ones(3, 2), torch.ones(3))})
    assert names == ["grid.points", "grid.strides"]
    assert unflatten(layout, tensors)["grid"].strides is tensors[1]  # a same-named record with the same fields
    names, tensors, layout = flatten({"memory": Sequence(torch.ones(1, 2, 3), torch.zeros(1, 2).bool())})
    assert names == ["memory.features", "memory.padding_mask"]
    assert type(unflatten(layout, tensors)["memory"]) is Sequence
    with pytest.raises(TypeError, match="det.bad is a object"):
        flatten({"det": {"bad": object()}})


def test_check_graph_reports_a_mismatch(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 3)).eval()
    path = tmp_path / "m.onnx"
    info = export_graph(model, (torch.randn(2, 1, 8, 8),), path, ["images"], probe=(torch.randn(3, 1, 8, 8),))
    assert info.batch_outputs == ["output"]
    assert check_graph(path, model, (torch.randn(5, 1, 8, 8),))[0].max_abs_diff < 1e-5
    with torch.no_grad():
        model[2].bias += 0.5
    with pytest.raises(ExportCheckError, match=r"m\.onnx does not match eager PyTorch: output max abs diff 0\.5"):
        check_graph(path, model, (torch.randn(5, 1, 8, 8),))


# ---- families ---------------------------------------------------------------------------------------
def test_classifier_export_folds_batchnorm_prunes_heads_and_batches(runs):
    run = runs("classifier")
    report = export_run(run, heads=["label"])
    path = report.files[0]
    assert path == Path(run.path) / "model.onnx"
    assert report.max_abs_diff < 1e-4 and "BatchNorm folded: 4 of 4 layers" in report.notes
    assert "BatchNormalization" not in _ops(path)
    graph = OnnxGraph(path)
    assert graph.output_names == ["label"] and graph.metadata["heads"] == ["label"]
    for batch in (1, 8):  # the batch axis is dynamic
        images = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            expected = run.model(images)["label"]
        torch.testing.assert_close(graph(images)["label"], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(Exception, match="no head named nope"):
        export_run(run, heads=["nope"])
    with pytest.raises(ExportError, match="none of this model.s heads .label, again. has any to export"):
        export_run(run, nms=True)


@pytest.mark.parametrize("family, outputs", [("unet", ["mask"]), ("autoencoder", ["decoder.0"]),
                                             ("vae", ["decoder.images", "decoder.mean", "decoder.logvar"])])
def test_dense_families_export(runs, family, outputs):
    report = export_run(runs(family))
    checks = report.checks["model.onnx"]
    assert [c.name for c in checks] == outputs
    assert report.max_abs_diff < 1e-4
    assert checks[0].shape[0] == 3  # checked at batch 3, traced at batch 2


def test_unet_exports_with_dynamic_height_and_width(runs, tmp_path):
    run = runs("unet")  # traced at 64x64
    report = export_run(run, out=tmp_path / "unet.onnx")
    assert any(n.startswith("dynamic height and width: also checked at 97x81") for n in report.notes)
    graph = OnnxGraph(tmp_path / "unet.onnx")
    assert graph.metadata["dynamic_size"] and graph.metadata["input_size"] == [64, 64]
    backed = onnx_run(run, tmp_path / "unet.onnx").model
    for size in [(96, 80), (45, 70)]:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = run.model(images)["mask"]
        assert graph(images)["mask"].shape == (2, 11, *size)
        torch.testing.assert_close(backed(images)["mask"], expected, atol=1e-4, rtol=1e-4)


def test_predict_over_onnxruntime_at_the_images_own_size(tmp_path, cli, capsys):
    from test_segmentation import _write_pair

    for index in range(10):
        _write_pair(tmp_path / "data", f"im{index}", size=(24, 20))
    data = {"name": "image-masks", "root": str(tmp_path / "data"), "image_size": None, "batch_size": 4}
    run = make_run({"model": SPECS["unet"]["model"], "data": data}, tmp_path / "run")  # native size: no resize
    assert cli(["export", str(run.path), "--input-size", "32", "32"]) == 0
    assert "dynamic height and width" in capsys.readouterr().out
    image = tmp_path / "other.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    assert cli(["predict", str(run.path), str(image), "--out", str(tmp_path / "eager")]) == 0
    eager = capsys.readouterr().out
    assert cli(["predict", str(run.path), str(image), "--backend", "onnxruntime", "--out", str(tmp_path / "ort")]) == 0
    exported = capsys.readouterr().out
    assert [l for l in exported.splitlines() if "\tmask:" in l] == [l for l in eager.splitlines() if "\tmask:" in l]
    assert f"wrote {tmp_path / 'ort' / 'other.overlay.png'}" in exported


def test_fcos_export_raw_outputs_and_with_nms(runs, tmp_path):
    run = runs("fcos")
    raw = export_run(run, out=tmp_path / "raw.onnx")
    names = [c.name for c in raw.checks["raw.onnx"]]
    assert names[:3] == ["boxes.cls_logits", "boxes.box_regression", "boxes.centerness"] and raw.max_abs_diff < 1e-4
    assert any(n.startswith("input size fixed at 64x64") for n in raw.notes)  # its grid is traced at that size
    with pytest.raises(ExportError, match="exported for 64x64 images, got 96x96"):
        onnx_run(run, tmp_path / "raw.onnx").model(torch.randn(1, 3, 96, 96))
    assert "NonMaxSuppression" not in _ops(tmp_path / "raw.onnx")
    nms = export_run(run, out=tmp_path / "nms.onnx", nms=True)
    assert "NonMaxSuppression" in _ops(tmp_path / "nms.onnx")
    boxes = nms.checks["nms.onnx"][0]
    assert boxes.shape[0] > 0 and boxes.max_abs_diff < 1e-2  # detections found, and equal to eager's
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        eager = run.model.heads["boxes"].predict(run.model(images)["boxes"])
    for path in (tmp_path / "raw.onnx", tmp_path / "nms.onnx"):  # predict's view: the head's detections
        backed = onnx_run(run, path).model
        found = backed.heads["boxes"].predict(backed(images)["boxes"])
        assert [len(d["boxes"]) for d in found] == [len(d["boxes"]) for d in eager]
        torch.testing.assert_close(torch.sort(found[0]["scores"]).values, torch.sort(eager[0]["scores"]).values,
                                   atol=1e-4, rtol=0)


def test_faster_rcnn_exports_with_its_postprocessing(runs):
    report = export_run(runs("faster_rcnn"))
    checks = report.checks["model.onnx"]
    assert checks[0].shape[0] > 0 and report.max_abs_diff < 1e-2
    assert any("batch 1" in note for note in report.notes)
    assert {"NonMaxSuppression", "RoiAlign"} <= _ops(report.files[0])


def test_batched_and_single_postprocessing_share_a_batch_1_graph(runs):
    run = runs("fcos+rpn")  # rpn: raw outputs do not batch, so both heads' post-processing goes in the graph
    report = export_run(run)
    assert any("proposals: exported with post-processing" in note for note in report.notes)
    assert any("batch 1" in note for note in report.notes) and report.max_abs_diff < 1e-2
    names = [c.name for c in report.checks["model.onnx"]]
    assert names == ["boxes.boxes", "boxes.scores", "boxes.labels", "proposals.boxes", "proposals.scores",
                     "proposals.labels"]
    images = torch.randn(3, 3, 64, 64)
    backed = onnx_run(run).model
    with torch.no_grad():
        eager, exported = run.model(images), backed(images)
    for name, head in run.model.heads.items():
        reference, found = head.predict(eager[name]), backed.heads[name].predict(exported[name])
        assert [len(d["boxes"]) for d in found] == [len(d["boxes"]) for d in reference]
        paired, other = head.align_predictions(reference, found)
        torch.testing.assert_close(other["boxes"], paired["boxes"], atol=1e-3, rtol=0)


def test_translator_exports_encoder_and_step_and_generates_the_same(runs, cli, capsys):
    from edh.export.onnx import read_metadata
    from edh.workflows.translate import Translator

    run = runs("translator")
    report = export_run(run)
    assert [p.name for p in report.files] == ["model.onnx", "model.decoder_step.onnx"]
    assert report.max_abs_diff < 1e-4
    metadata = read_metadata(report.files[0])  # the tensors are the decoder's (StepDecoder.export_*)
    assert (metadata["memory"], metadata["state"]) == (["memory_kv", "memory_mask"], ["self_kv"])
    assert metadata["rows_axes"] == run.model.decoder.export_rows_axes()
    assert metadata["step_file"] == report.files[1].name
    assert read_metadata(report.files[1])["outputs"] == ["logits", "next.self_kv"]
    assert any(n.startswith("beam search (beam 3)") and "tokens equal" in n for n in report.notes)
    texts = ["one hundred and twelve", "seven", "two hundred"]
    eager = Translator(run).translate(texts, beam_size=3)
    assert Translator(onnx_run(run)).translate(texts, beam_size=3) == eager
    assert Translator(onnx_run(run)).translate(texts, beam_size=1) == Translator(run).translate(texts, beam_size=1)
    assert cli(["predict", str(run.path), *texts, "--beam", "2"]) == 0
    eager_lines = capsys.readouterr().out
    assert cli(["predict", str(run.path), *texts, "--beam", "2", "--backend", "onnxruntime"]) == 0
    assert capsys.readouterr().out == eager_lines and eager_lines.count("\t") == 3


# ---- the command line -------------------------------------------------------------------------------
def test_cli_export_then_predict_with_onnxruntime(runs, tmp_path, capsys, cli):
    main = cli
    run = runs("classifier")
    images = []
    for index in range(3):
        path = tmp_path / f"img{index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        images.append(str(path))
    out = tmp_path / "cls.onnx"
    assert main(["predict", str(run.path), *images, "--backend", "onnxruntime", "--onnx", str(out)]) == 2
    assert "edh export" in capsys.readouterr().err
    assert main(["export", str(run.path), "--out", str(out), "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "max abs diff vs eager PyTorch" in text
    assert main(["predict", str(run.path), *images, "--top-k", "3"]) == 0
    eager = capsys.readouterr().out
    assert main(["predict", str(run.path), *images, "--top-k", "3", "--backend", "onnxruntime", "--onnx",
                 str(out), "--heads", "label"]) == 0
    exported = capsys.readouterr().out
    assert exported.strip() and exported == "".join(line + "\n" for line in eager.splitlines() if "\tlabel:" in line)
    assert main(["export", str(run.path), "--out", str(tmp_path / "x.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
