"""The demo report reads well: captions in words, per-class figures as tables, curves that say "one
epoch", detection pictures with only the boxes above the head's picture threshold. Built from
hand-made `DemoResult`s and tiny heads: no demo is trained."""

from __future__ import annotations

import html
import re

import pytest
import torch
from PIL import Image

from edh.core.features import FeatureSpec
from edh.inspection.report import per_class_table, write_report
from edh.workflows.demo import Demo, DemoResult, Figure, prediction_caption, run_figures

from test_detection import tiny_detector

CAPTION = "Predictions of head 'boxes' on 2 test images (boxes scoring >= 0.30, with class and score)"


def _png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _result(tmp_path, metrics, pictures=()) -> DemoResult:
    return DemoResult(Demo("detector", "a detector", "detector-fcos-scenes.yaml"), tmp_path / "detector", 1.0,
                      metrics, "role table", pictures=list(pictures))


def test_captions_are_words_not_file_stems(tmp_path):
    pictures = [_png(tmp_path / "detector" / "examples" / f"example_{i}.boxes.png") for i in (0, 1)]
    html_path, md_path = write_report([_result(tmp_path, {"boxes": {"mAP": 0.5}}, [Figure(CAPTION, pictures)])],
                                      tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert re.findall(r"<figcaption>(.*?)</figcaption>", page) == [html.escape(CAPTION)]
    assert page.count("<img ") == 2 and "example" not in page  # both pictures under the one caption, no stem
    assert f"*{CAPTION}*" in markdown and "(detector/examples/example_1.boxes.png)" in markdown
    assert "example 0.boxes" not in markdown


def test_run_figures_say_what_they_show(tmp_path):
    _png(tmp_path / "confusion_matrix.png")
    _png(tmp_path / "curves.png")
    (tmp_path / "metrics.csv").write_text("epoch,step,val/loss\n0,3,1.5\n")
    confusion, curves = run_figures(tmp_path)
    assert confusion.caption.startswith("Confusion matrix on the test split")
    assert curves.caption == "Training curves: loss and validation metrics after the one epoch trained"
    (tmp_path / "metrics.csv").write_text("epoch,step,val/loss\n0,3,1.5\n1,6,1.2\n")
    assert run_figures(tmp_path)[1].caption == "Training curves: loss and validation metrics per epoch"


def test_prediction_captions_name_the_head_and_the_picture_threshold():
    from edh.heads.classification import ClassificationHead

    detector = tiny_detector("fcos", score_thresh=0.45).heads["det"]
    assert prediction_caption("det", detector, 4) == (
        "Predictions of head 'det' on 4 test images (boxes scoring >= 0.45, with class and score)")
    classifier = ClassificationHead(FeatureSpec("pyramid", (8,), (1,)), 3)
    assert prediction_caption("label", classifier, 8).startswith("Predictions of head 'label' on 8 test images (")


def test_per_class_metrics_become_a_table(tmp_path):
    metrics = {"mask": {"miou": 0.5, "iou/cat": 0.25, "iou/dog": 0.75, "dice/cat": 0.4, "dice/dog": 0.8,
                        "recall/a|b": 0.125}}
    assert per_class_table(metrics["mask"]) == (["iou", "dice", "recall"], ["cat", "dog", "a|b"], {
        ("cat", "iou"): 0.25, ("dog", "iou"): 0.75, ("cat", "dice"): 0.4, ("dog", "dice"): 0.8, ("a|b", "recall"): 0.125})
    html_path, md_path = write_report([_result(tmp_path, metrics)], tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    table = re.search(r"<table class=per-class>.*?</table>", page).group(0)
    assert "<tr><th>class</th><th>iou</th><th>dice</th><th>recall</th></tr>" in table
    assert "<tr><td>cat</td><td class=n>0.250</td><td class=n>0.400</td><td></td></tr>" in table
    assert "iou/cat" not in page and "miou = 0.5000" in page  # the scalar stays in the headline
    lines = markdown.splitlines()
    header = lines.index("| class | iou | dice | recall |")
    assert lines[header + 1:header + 5] == ["|---|---:|---:|---:|", "| cat | 0.250 | 0.400 |  |",
                                            "| dog | 0.750 | 0.800 |  |", "| a\\|b |  |  | 0.125 |"]
    assert "iou/cat" not in markdown


def test_classification_and_detection_heads_give_per_class_figures():
    from edh.heads.classification import ClassificationHead

    head = ClassificationHead(FeatureSpec("pyramid", (8,), (1,)), 2, ["cat", "dog"])
    scalars, _ = head.summarize({"acc": torch.tensor(0.5), "precision": torch.tensor([0.25, 0.75]),
                                 "recall": torch.tensor([1.0, 0.5])})
    assert per_class_table(scalars)[1:] == (["cat", "dog"], {
        ("cat", "precision"): 0.25, ("dog", "precision"): 0.75, ("cat", "recall"): 1.0, ("dog", "recall"): 0.5})
    detector = tiny_detector("fcos").heads["det"]
    scalars, _ = detector.summarize({"map": torch.tensor(0.3), "map_per_class": torch.tensor([0.5, -1.0, 0.25]),
                                     "classes": torch.tensor([1, 2, 3])})
    assert {k: v for k, v in scalars.items() if "/" in k} == {
        f"AP/{detector.label_name(1)}": 0.5, f"AP/{detector.label_name(3)}": 0.25}  # class 2: no ground truth


def _curve_rows(epochs: int) -> list[dict[str, float]]:  # val/map_large: undefined, no panel
    return [{"epoch": e, "step": 3 * (e + 1), "train/loss": 2.0 - e, "val/loss": 2.5 - e, "val/acc": 0.3 + 0.1 * e,
             "val/map_large": -1.0} for e in range(epochs)]


def test_one_epoch_curves_are_bars_that_say_so(tmp_path):
    from edh.train.callbacks import RunFolderWriter
    from edh.utils.plots import curves_figure

    figure = curves_figure(_curve_rows(1))
    shown = [axis for axis in figure.axes if axis.axison]
    assert [axis.get_title().splitlines()[0] for axis in shown] == ["loss", "val/acc"]
    assert all("one epoch" in axis.get_title() for axis in shown)
    assert [len(axis.patches) for axis in shown] == [2, 1] and all(not axis.lines for axis in shown)
    assert [t.get_text() for t in shown[0].texts] == ["2", "2.5"]  # each value written on its bar
    writer = RunFolderWriter(tmp_path)  # the run folder's curves.png is drawn by the same code
    writer.rows = _curve_rows(1)
    writer._plot()
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_two_epoch_curves_are_lines_over_whole_epochs(tmp_path):
    from edh.utils.plots import curves_figure, curves_png

    figure = curves_figure(_curve_rows(2))
    shown = [axis for axis in figure.axes if axis.axison]
    assert [axis.get_title() for axis in shown] == ["loss", "val/acc"]
    assert [len(axis.lines) for axis in shown] == [2, 1] and all(not axis.patches for axis in shown)
    figure.canvas.draw()
    ticks = [t for t in shown[0].get_xticks() if shown[0].get_xlim()[0] <= t <= shown[0].get_xlim()[1]]
    assert ticks == [0, 1]  # whole epochs, no 0.25 steps
    assert curves_png(_curve_rows(2), tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_detection_pictures_show_only_boxes_above_the_threshold(tmp_path, monkeypatch):
    from edh.heads.detection import drawing

    notes = []
    real_note = drawing.picture_note
    monkeypatch.setattr(drawing, "picture_note", lambda *args: notes.append(args) or real_note(*args))
    detections = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]]),
                  "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 2])}
    black = torch.zeros(3, 64, 64)

    def edges(min_score):  # the colour on the left edge of each box, in the enlarged (x6) picture
        out = drawing.draw_detections(tmp_path / "none.png", detections, (64, 64), str, tmp_path / f"{min_score}.png",
                                      black, min_score=min_score)
        picture = Image.open(out).convert("RGB")
        strip = picture.height - 64 * 6
        return picture.getpixel((4 * 6 + 1, strip + 12 * 6)), picture.getpixel((40 * 6 + 1, strip + 50 * 6)), picture

    kept, dropped, picture = edges(0.3)
    assert kept != (0, 0, 0) and dropped == (0, 0, 0)
    assert notes[-1] == (1, 2, 0.3) and real_note(1, 2, 0.3) == "boxes scoring >= 0.30: 1 of 2"
    banner = [picture.getpixel((x, y)) for x in range(picture.width) for y in range(picture.height - 64 * 6)]
    assert (255, 255, 0) in banner  # the note is written on the strip above the image
    kept, dropped, _ = edges(0.05)
    assert kept != (0, 0, 0) and dropped != (0, 0, 0) and notes[-1] == (2, 2, 0.05)


def test_detection_heads_draw_at_their_picture_threshold(tmp_path, monkeypatch):
    from edh.heads.detection import drawing

    thresholds = []
    monkeypatch.setattr(drawing, "draw_detections", lambda *args, min_score, **kwargs: thresholds.append(min_score))
    for score_thresh in (0.05, 0.5):
        head = tiny_detector("fcos", score_thresh=score_thresh).heads["det"]
        empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        head.write_predictions([empty], torch.zeros(1, 3, 64, 64), [tmp_path / "x.png"], tmp_path / "out")
    assert thresholds == [pytest.approx(0.3), pytest.approx(0.5)]


def test_the_time_budget_is_shared_by_weight_and_left_over_time_moves_on():
    from edh.workflows.demo import (DEMOS, MIN_TRAINING_SECONDS, REPORT_SECONDS, SECONDS_AFTER_TRAINING,
                                    training_cap)

    weights = [d.weight for d in DEMOS]
    budget = 600.0
    spare = budget - SECONDS_AFTER_TRAINING * len(weights) - REPORT_SECONDS
    first = training_cap(budget, weights)
    assert abs(first - spare * weights[0] / sum(weights)) < 1e-9
    # the first model finished in a tenth of its share: the others share what it left
    second = training_cap(budget - first / 10 - SECONDS_AFTER_TRAINING, weights[1:])
    assert second > (spare * weights[1] / sum(weights))
    assert training_cap(5.0, weights) == MIN_TRAINING_SECONDS  # over budget: each still trains a little
    assert training_cap(600.0, [1.0]) == 600.0 - SECONDS_AFTER_TRAINING - REPORT_SECONDS


def test_demo_minutes_option():
    from edh.cli import build_parser

    assert build_parser().parse_args(["demo"]).minutes == 10.0
    assert build_parser().parse_args(["demo", "--minutes", "0"]).minutes == 0.0
