"""`edh serve`: the HTTP contract in process (FastAPI's TestClient), on tiny trained runs of each kind:
answers equal `edh predict`'s, every bad request is one clear 4xx and the server goes on, the batcher
batches and isolates failures. The SIGTERM drain and the page in a real browser are in test_serve_process.py."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_run_spec  # noqa: E402

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def _train(spec: dict, folder: Path, **limits):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    return train_run(parse_run_spec(spec), folder, **{"max_steps": 2, "limit_val_batches": 1, **limits})


SEGMENTER = {
    "model": {"encoder": {"name": "test_resnet"}, "decoder": {"name": "unet", "decoder_channels": [16, 8, 8, 8, 8]},
              "heads": {"mask": {"type": "segmentation", "source": "decoder"}}},
    "data": {"name": "scenes", "image_size": 32, "sprite_size": [12, 16], "num_train": 16, "num_val": 4,
             "num_test": 4, "batch_size": 8},
    "train": {"epochs": 1, "lr": 0.01},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}
DETECTOR = {
    "model": {"encoder": {"name": "test_resnet"}, "decoder": {"name": "fpn", "out_channels": 16},
              "heads": {"objects": {"type": "mask_rcnn", "source": "decoder", "target": "boxes", "num_classes": 10,
                                    "anchor_sizes": [[16], [32], [64], [128], [256]], "rpn_pre_nms_top_n": [200, 100],
                                    "rpn_post_nms_top_n": [100, 50], "box_batch_size_per_image": 64,
                                    "mask_layers": [16, 16], "mask_dim_reduced": 16, "max_detections": 20,
                                    "score_thresh": 0.0}}},
    "data": {"name": "scenes", "image_size": 64, "num_train": 8, "num_val": 4, "num_test": 4, "batch_size": 4},
    "train": {"epochs": 1, "lr": 0.001},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}
TRANSLATOR = {
    "model": {"encoder": {"name": "transformer", "preset": "tiny", "d_model": 32, "num_heads": 2, "ffn_dim": 64},
              "decoder": {"name": "transformer", "preset": "tiny", "d_model": 32, "num_heads": 2, "ffn_dim": 64},
              "heads": {"tokens": {"type": "lm", "source": "decoder"}}},
    "data": {"name": "numbers", "max_number": 99, "batch_size": 16},
    "train": {"epochs": 1, "lr": 0.005, "seed": 0},
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
}


def _speech_spec(root: Path) -> dict:
    from test_speech import TINY_ENCODER, sine, write_wav

    for name in ("a.wav", "b.wav", "c.wav"):
        write_wav(root / name, sine(16000, 0.2))
    (root / "transcripts.tsv").write_text("a.wav\thello\ttrain\nb.wav\tbye\ttest\nc.wav\tok\tval\n")
    return {"model": {"encoder": dict(TINY_ENCODER), "heads": {"text": {"type": "ctc"}}},
            "data": {"name": "audio-folder", "path": str(root), "batch_size": 2},
            "train": {"epochs": 1, "seed": 0}, "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "clips").mkdir()
    return {"classifier": _train(tiny_run_spec(epochs=1), root / "classifier").path,
            "speech": _train(_speech_spec(root / "clips"), root / "speech").path,
            "segmenter": _train(SEGMENTER, root / "segmenter").path,
            "detector": _train(DETECTOR, root / "detector", max_steps=1).path,
            "translator": _train(TRANSLATOR, root / "translator").path}


def _client(run_dir, max_body_bytes=1 << 20, max_inputs=8, batch_size=8, timeout_ms=2.0, **engine):
    from edh.serve.app import create_app

    app = create_app(run_dir, batch_size, timeout_ms, max_body_bytes, max_inputs, **engine)
    return TestClient(app, raise_server_exceptions=False)


def _png(path: Path, size=(8, 8), mode="L", seed=0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3 if mode == "RGB" else 1), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def test_classifier_answers_as_edh_predict_in_json_and_multipart(runs, tmp_path):
    from edh.workflows.predict import predict_inputs
    from edh.workflows.run import load_run

    files = [_png(tmp_path / f"digit{i}.png", seed=i) for i in range(3)]
    expected, _ = predict_inputs(load_run(runs["classifier"]), files, top_k=3)
    with _client(runs["classifier"]) as client:
        answer = client.post("/predict", json={"inputs": [{"image": _b64(f), "name": f.name} for f in files],
                                               "top_k": 3})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["name"] for p in predictions] == [f.name for f in files]
        for prediction, want in zip(predictions, expected):
            label = prediction["heads"]["label"]
            assert len(label["labels"]) == 3 and label["scores"] == sorted(label["scores"], reverse=True)
            shown = ", ".join(f"{l} {s:.3f}" for l, s in zip(label["labels"], label["scores"]))
            assert shown == want.lines["label"] and prediction["text"] == f"label: {want.lines['label']}"
        form = client.post("/predict?picture=1", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files[:2]],
                           data={"top_k": "2"})
        assert form.status_code == 200, form.text
        both = form.json()["predictions"]
        assert [p["name"] for p in both] == ["digit0.png", "digit1.png"]
        assert [p["heads"]["label"]["labels"] for p in both] == [p["heads"]["label"]["labels"][:2] for p in predictions[:2]]
        with Image.open(io.BytesIO(base64.b64decode(both[0]["picture"]))) as picture:
            assert picture.format == "PNG" and picture.width >= 64
        meta = client.get("/metadata").json()
        assert meta["input_kind"] == "image" and meta["input_size"] == [8, 8] and meta["in_channels"] == 1
        assert meta["heads"]["label"]["class_names"] == [str(i) for i in range(10)]
        assert [row["role"] for row in meta["roles"]][:2] == ["Encoder", "Head:label"]
        assert meta["batching"]["items"] == 5 and client.get("/health").json() == {"status": "ok"}
        assert 'id="file"' in client.get("/").text


def _bad_requests(tmp_path):
    good = _b64(_png(tmp_path / "good.png"))
    truncated = base64.b64encode((tmp_path / "good.png").read_bytes()[:40]).decode()
    return [
        ("not JSON", dict(content=b"{inputs", headers={"content-type": "application/json"}), 400, "not JSON"),
        ("a JSON list", dict(json=[1, 2]), 400, "must be an object"),
        ("no inputs", dict(json={"inputs": []}), 422, "no inputs"),
        ("an input that is a number", dict(json={"inputs": [3]}), 400, "is not an object"),
        ("not base64", dict(json={"inputs": [{"image": "%%%"}]}), 400, "not valid base64"),
        ("base64 of a number", dict(json={"inputs": [{"image": 12}]}), 400, "base64 string"),
        ("not an image", dict(json={"inputs": [{"image": base64.b64encode(b"hello").decode()}]}), 415, "cannot read image"),
        ("a truncated PNG", dict(json={"inputs": [{"image": truncated}]}), 415, "cannot read image"),
        ("an empty file", dict(json={"inputs": [{"image": ""}]}), 400, "empty"),
        ("text to an image run", dict(json={"inputs": [{"text": "seven"}]}), 415, "takes files"),
        ("no known key", dict(json={"inputs": [{"picture": good}]}), 400, "none of"),
        ("a bad top_k", dict(json={"inputs": [{"image": good}], "top_k": -2}), 400, "top_k"),
        ("too many inputs", dict(json={"inputs": [{"image": good}] * 9}), 413, "at most 8"),
        ("a body too large", dict(json={"inputs": [{"image": "A" * (1 << 20)}]}), 413, "at most"),
        ("plain text", dict(content=b"seven", headers={"content-type": "text/plain"}), 415, "Content-Type"),
        ("an empty uploaded file", dict(data={"top_k": "2"}, files=[("files", ("x.png", b"", "image/png"))]), 400,
         "empty"),
        ("a form without inputs", dict(data={"top_k": "2"}, headers={"content-type": "multipart/form-data; boundary=x"},
                                        content=b"--x--\r\n"), 422, "no inputs"),
        ("an unknown form field", dict(data={"colour": "red"}, files=[("files", ("a.png", b"x", "image/png"))]), 400,
         "unknown form field"),
    ]


def test_every_bad_request_is_one_clear_4xx_and_the_server_goes_on(runs, tmp_path):
    cases = _bad_requests(tmp_path)
    with _client(runs["classifier"]) as client:
        for what, request, status, words in cases:
            answer = client.post("/predict", **request)
            assert answer.status_code == status, (what, answer.status_code, answer.text)
            body = answer.json()
            assert set(body) == {"error"} and words in body["error"], (what, body)
            assert "Traceback" not in body["error"] and "/tmp" not in body["error"], (what, body)
        assert client.get("/nothing").status_code == 404 and "error" in client.get("/nothing").json()
        assert client.get("/predict").status_code == 405
        good = client.post("/predict", json={"image": _b64(_png(tmp_path / "after.png"))})  # one ITEM, no list
        assert good.status_code == 200 and len(good.json()["predictions"]) == 1
        assert client.get("/metadata").json()["answered"]["5xx"] == 0


def test_segmenter_answers_masks_at_the_images_own_size(runs, tmp_path):
    from edh.workflows.predict import predict_inputs
    from edh.workflows.run import load_run

    image = _png(tmp_path / "scene.png", size=(40, 56), mode="RGB")
    expected, _ = predict_inputs(load_run(runs["segmenter"]), [image])
    with _client(runs["segmenter"]) as client:
        answer = client.post("/predict", json={"inputs": [{"image": _b64(image)}], "picture": True})
        assert answer.status_code == 200, answer.text
        mask = answer.json()["predictions"][0]["heads"]["mask"]
        with Image.open(io.BytesIO(base64.b64decode(mask["mask_png"]))) as png:
            classes = np.asarray(png)
        assert classes.shape == (40, 56) == tuple(mask["size"]) and classes.max() < len(mask["class_names"])
        assert abs(sum(mask["fractions"].values()) - 1) < 1e-4
        counts = np.bincount(classes.ravel(), minlength=len(mask["class_names"]))
        assert {mask["class_names"][i]: round(c / classes.size, 6) for i, c in enumerate(counts) if c} == mask["fractions"]
        assert answer.json()["predictions"][0]["text"] == f"mask: {expected[0].lines['mask']}"
        assert answer.json()["predictions"][0]["picture"]
        assert client.get("/metadata").json()["heads"]["mask"]["class_names"][0] == "background"


def test_detector_answers_boxes_in_image_pixels_and_masks_as_rle(runs, tmp_path):
    from pycocotools import mask as mask_utils

    image = _png(tmp_path / "scene.png", size=(96, 128), mode="RGB", seed=3)
    with _client(runs["detector"]) as client:
        answer = client.post("/predict", json={"inputs": [{"image": _b64(image)}]})
        assert answer.status_code == 200, answer.text
        found = answer.json()["predictions"][0]["heads"]["objects"]
        meta = client.get("/metadata").json()["heads"]["objects"]
        assert found["size"] == [96, 128] and found["detections"], found
        scores = [d["score"] for d in found["detections"]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 20
        for detection in found["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 96 and detection["label"] in meta["class_names"]
            assert mask_utils.decode(detection["mask"]).shape == (96, 128)
        assert meta["type"] == "mask_rcnn" and meta["max_detections"] == 20


def test_translator_answers_text_as_translate_does(runs):
    from edh.workflows.translate import Translator

    sentences = ["forty two", "seven", "ninety nine"]
    translator = Translator.load(runs["translator"])
    expected = translator.translate(sentences)
    with _client(runs["translator"]) as client:
        answer = client.post("/predict", json={"inputs": [{"text": s} for s in sentences]})
        assert answer.status_code == 200, answer.text
        assert [p["text"] for p in answer.json()["predictions"]] == expected
        form = client.post("/predict", data={"text": ["seven"]})
        assert form.status_code == 200 and form.json()["predictions"][0]["text"] == translator.translate(["seven"])[0]
        wrong = client.post("/predict", json={"inputs": [{"image": base64.b64encode(b"x").decode()}]})
        assert wrong.status_code == 415 and "takes text" in wrong.json()["error"]
        assert client.get("/metadata").json()["input_kind"] == "text"


def test_speech_run_answers_a_wav_clip_as_edh_predict(runs, tmp_path):
    from test_speech import sine, write_wav

    from edh.workflows.predict import predict_inputs
    from edh.workflows.run import load_run

    clip = write_wav(tmp_path / "clip.wav", np.round(sine(22050, 0.4, 200) * 0.5).astype(np.int64), rate=22050)
    expected, _ = predict_inputs(load_run(runs["speech"]), [clip])
    with _client(runs["speech"]) as client:
        answer = client.post("/predict", json={"inputs": [{"audio": _b64(clip)}]})
        assert answer.status_code == 200, answer.text
        text = answer.json()["predictions"][0]["heads"]["text"]
        assert text["text"] == expected[0].lines["text"] and isinstance(text["score"], float)
        png = client.post("/predict", files=[("files", ("x.wav", _png(tmp_path / "x.png").read_bytes(), "audio/wav"))])
        assert png.status_code == 415 and "x.wav" in png.json()["error"], png.text
        assert client.get("/metadata").json()["input_kind"] == "audio"


def test_fast_and_onnxruntime_backends_answer_the_same(runs, tmp_path):
    from argparse import Namespace

    from edh.commands import apply_speed_arguments
    from edh.export.runs import onnx_run
    from edh.serve.engine import Engine, Options
    from edh.workflows.run import load_run

    files = [_png(tmp_path / f"d{i}.png", seed=i) for i in range(2)]

    def labels(run, **engine):
        engine = Engine(run, **engine)
        items = [engine.decode("file", f.read_bytes(), Options(top_k=3), f.name) for f in files]
        return [a["heads"]["label"] for a in engine.predict(items)]

    plain = labels(load_run(runs["classifier"]))
    fast = load_run(runs["classifier"])
    apply_speed_arguments(Namespace(fast=True, bf16=False, compile=False, int8=False, backend="torch"), fast)
    assert [a["labels"] for a in labels(fast)] == [a["labels"] for a in plain]
    from edh.cli import main

    assert main(["export", str(runs["classifier"]), "--out", str(tmp_path / "model.onnx")]) == 0
    onnx = labels(onnx_run(load_run(runs["classifier"]), tmp_path / "model.onnx"), backend="onnxruntime")
    assert [a["labels"][0] for a in onnx] == [a["labels"][0] for a in plain]
    assert np.allclose([a["scores"] for a in onnx], [a["scores"] for a in plain], atol=1e-4)


# ---- the batcher ------------------------------------------------------------------------------------
def test_batcher_gathers_concurrent_requests_up_to_its_size():
    from edh.serve.batching import Batcher

    sizes = []

    def predict(items):
        sizes.append(len(items))
        return [item * 10 for item in items]

    batcher = Batcher(predict, max_batch_size=4, timeout_ms=200)

    async def many():
        return await asyncio.gather(*(batcher.submit([i]) for i in range(10)))

    assert asyncio.run(many()) == [[i * 10] for i in range(10)]
    batcher.close(5)
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) <= 4  # batched, never above the size
    assert batcher.counts.batches == len(sizes) and batcher.counts.largest_batch == 4


def test_batcher_fails_only_the_failing_batch_and_drains_on_close():
    from edh.serve.batching import Batcher

    release = threading.Event()

    def predict(items):
        if "boom" in items:
            raise RuntimeError("boom")
        release.wait(5)
        return [f"ok {item}" for item in items]

    batcher = Batcher(predict, max_batch_size=1, timeout_ms=0)

    async def scenario():
        bad = asyncio.ensure_future(batcher.submit(["boom"]))
        good = [asyncio.ensure_future(batcher.submit([f"x{i}"])) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = threading.Thread(target=batcher.close, args=(10,))
        closing.start()  # close while three requests wait: they are still answered
        release.set()
        results = await asyncio.gather(*good)
        with pytest.raises(RuntimeError, match="boom"):
            await bad
        closing.join(10)
        return results

    assert asyncio.run(scenario()) == [["ok x0"], ["ok x1"], ["ok x2"]]
    assert not batcher._thread.is_alive()


def test_batch_failure_is_a_500_and_the_next_request_is_answered(runs, tmp_path, monkeypatch):
    client = _client(runs["classifier"])
    good = {"inputs": [{"image": _b64(_png(tmp_path / "g.png"))}]}
    with client:
        from edh.serve import engine as engine_module

        calls = {"n": 0}
        original = engine_module.Engine._predict_heads

        def flaky(self, group):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("out of memory (simulated)")
            return original(self, group)

        monkeypatch.setattr(engine_module.Engine, "_predict_heads", flaky)
        failed = client.post("/predict", json=good)
        assert failed.status_code == 500 and "out of memory (simulated)" in failed.json()["error"]
        assert client.post("/predict", json=good).status_code == 200
