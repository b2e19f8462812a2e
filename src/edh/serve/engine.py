"""`Engine`: a loaded run on the model side of ``edh serve``: decode one request's inputs, predict a batch.

`Engine.decode` runs per request (in the server's thread pool): it writes an uploaded file to the
engine's work folder, reads it with the run's own reader (`edh.workflows.inputs.reader_for`, the
preprocessing of ``edh predict``) and turns every problem into a `RequestError` (4xx) before the item
can reach a batch. `Engine.predict` runs on the batcher's one worker thread: items with the same
options (and, for runs without a fixed image size, the same size) share one forward; every head answers
through the Head contract (``predict``, ``prediction_json``, ``format_prediction``, ``write_predictions``
for ``picture``). Generating runs (translator, captioner, speech) answer with the generated text.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edh.serve.codecs import RequestError
from edh.workflows.inputs import reader_for
from edh.workflows.run import Run

log = logging.getLogger("edh")


@dataclass(frozen=True)
class Options:
    """What a request asks beyond its inputs: ``top_k`` classes, and ``picture`` (heads that draw)."""

    top_k: int | None = None
    picture: bool = False


@dataclass
class Item:
    """One decoded input: its model input ``tensor`` (a batch of one), the file it came from (image and
    audio runs) or its ``text``, the image's own ``size`` and the request's `Options`."""

    tensor: torch.Tensor
    options: Options
    name: str
    path: Path | None = None
    text: str | None = None
    size: tuple[int, int] | None = None

    def release(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Engine:
    """Predicts for a run: ``decode`` requests' inputs, ``predict`` batches of them, ``metadata``."""

    def __init__(self, run: Run, backend: str = "torch", beam_size: int | None = None,
                 settings: dict[str, Any] | None = None, allow_changed_data: bool = False) -> None:
        from edh.ops.generation import generates
        from edh.workflows.data_check import check_run_info

        check_run_info(run, allow_changed_data)
        self.run, self.backend, self.beam_size = run, backend, beam_size
        self.reader = reader_for(run)
        self.model = run.model.eval()
        self.generating = generates(self.model)
        self.translator = None
        self.tasks: dict[str, Any] = {}
        if self.generating:
            from edh.workflows.translate import Translator

            self.translator = Translator(run)
        else:
            from edh.workflows.predict import apply_prediction_settings, say_prediction_settings

            self.tasks = self.model.tasks()
            apply_prediction_settings(self.tasks, settings or {})
            say_prediction_settings(self.tasks)
        self.work = Path(tempfile.mkdtemp(prefix="edh-serve-"))

    @property
    def takes_text(self) -> bool:
        return self.reader.texts

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def warm_up(self) -> None:
        """One forward on a blank input before the first request (``--compile`` compiles here, not on a
        user's request); skipped for runs without a fixed input size and for generating runs."""
        info = self.run.info
        if self.generating or self.run.info.input_kind != "image" or not info.image_size:
            return
        blank = torch.zeros(1, int(info.in_channels), *info.image_size)
        with torch.inference_mode():
            self.model(blank)

    # ---- one request's inputs ---------------------------------------------------------------------
    def decode(self, kind: str, payload: Any, options: Options, name: str) -> Item:
        """``("file", bytes)`` or ``("text", str)`` -> an `Item`; a `RequestError` when it cannot be one."""
        if kind == "text":
            if not self.takes_text:
                raise RequestError(415, f"{name} is text, but this run takes {self.run.info.input_kind} files: send "
                                   "them as {\"image\": \"<base64>\"} (or \"audio\"), or as multipart files")
            return Item(self.reader.read(self.run, [payload]), options, name, text=payload)
        if self.takes_text:
            raise RequestError(415, f"{name} is a file, but this run takes sentences: send {{\"text\": \"...\"}}")
        if not payload:
            raise RequestError(400, f"{name} is empty (0 bytes)")
        path = self.work / uuid.uuid4().hex
        path.write_bytes(payload)
        try:
            tensor = self.reader.read(self.run, [path])
            size = self.reader.sizes([path])[0] if self.reader.sizes is not None else None
        except (ValueError, OSError) as error:  # DataError, ImageReadError, AudioFormatError
            path.unlink(missing_ok=True)
            raise RequestError(415, str(error).replace(str(path), name)) from None
        return Item(tensor, options, name, path=path, size=size)

    # ---- a batch ----------------------------------------------------------------------------------
    def predict(self, items: list[Item]) -> list[dict[str, Any]]:
        """Each item's answer, in order: ``{"name", "heads": {head: JSON}, "text", "picture"?}``."""
        groups: dict[Any, list[int]] = {}
        for index, item in enumerate(items):
            key = (item.options, self._shape_key(item), index if item.options.picture else None)
            groups.setdefault(key, []).append(index)
        answers: list[dict[str, Any]] = [{} for _ in items]
        try:
            for indices in groups.values():
                group = [items[i] for i in indices]
                found = self._generate(group) if self.generating else self._predict_heads(group)
                for index, answer in zip(indices, found):
                    answers[index] = {"name": items[index].name, **answer}
        finally:
            for item in items:
                item.release()
        return answers

    def _shape_key(self, item: Item) -> Any:
        return tuple(item.tensor.shape) if self.reader.one_at_a_time(self.run) else None

    def _generate(self, group: list[Item]) -> list[dict[str, Any]]:
        translator = self.translator
        options = {"beam_size": self.beam_size} if self.beam_size else {}
        if self.takes_text:
            texts = translator.translate([item.text for item in group], **options)
        else:
            inputs = self.reader.join(self.run, [item.tensor for item in group])
            texts = translator.tokenizer.decode_batch(translator.generate_ids(inputs, **options))
        return [{"heads": {translator.head_name: {"text": text}}, "text": text} for text in texts]

    def _predict_heads(self, group: list[Item]) -> list[dict[str, Any]]:
        from edh.ops.tiling import predictions_of
        from edh.workflows.predict import at_own_size

        inputs = self.reader.join(self.run, [item.tensor for item in group])
        options = {"top_k": group[0].options.top_k} if group[0].options.top_k else {}
        size = tuple(inputs.shape[-2:]) if inputs.ndim == 4 else None
        with torch.inference_mode():
            outputs = self.model(inputs)
        answers: list[dict[str, Any]] = [{"heads": {}, "lines": {}, "pictures": {}} for _ in group]
        for name, head in self.tasks.items():
            for indices, raw, at in at_own_size(head, outputs[name], size, [item.size for item in group]):
                shown = inputs if len(indices) == len(group) else inputs[indices]
                prediction = predictions_of(head, raw, input_size=at, inputs=shown, **options)
                for position, index in enumerate(indices):
                    item = group[index]
                    answers[index]["heads"][name] = head.prediction_json(prediction, position, item.path, at)
                    answers[index]["lines"][name] = head.format_prediction(prediction, position)
                if group[0].options.picture and self.reader.pictures:
                    self._draw(head, name, prediction, shown, [group[i] for i in indices], answers, indices)
        for answer in answers:
            lines = answer.pop("lines")
            answer["text"] = "; ".join(f"{name}: {line}" for name, line in lines.items() if line)
            if answer["pictures"]:
                answer["picture"] = next(iter(answer["pictures"].values()))
            else:
                del answer["pictures"]
        return answers

    def _draw(self, head: Any, name: str, prediction: Any, shown: torch.Tensor, items: list[Item],
              answers: list[dict[str, Any]], indices: list[int]) -> None:
        """The head's pictures of one item (picture requests run one item per forward) as base64 PNG."""
        folder = self.work / f"pictures-{uuid.uuid4().hex}"
        try:
            files = head.write_predictions(prediction, shown, [item.path for item in items], folder)
            if files:
                answers[indices[0]]["pictures"][name] = base64.b64encode(Path(files[0]).read_bytes()).decode("ascii")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- what the server says about itself ---------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The run, its input (kind, size, channels), its heads (type, classes) and its role table."""
        info, spec = self.run.info, self.run.spec
        heads = {}
        for name, head in (self.tasks or {self.translator.head_name: self.translator.head}).items():
            spec_head = spec.model.heads.get(name)
            entry: dict[str, Any] = {"type": spec_head.type if spec_head is not None else type(head).__name__,
                                     "task": head.task}
            if head.class_names:
                entry["class_names"] = [str(c) for c in head.class_names]
            entry.update({k: v for k, v in head.prediction_settings().items()})
            heads[name] = entry
        size = tuple(info.image_size) if info.image_size else None
        try:
            roles = self.run.model.describe(size).to_dict()["rows"] if hasattr(self.run.model, "describe") else []
        except Exception as error:  # noqa: BLE001 - the table is information; the server works without it
            log.warning("edh serve: no role table for /metadata (%s)", error)
            roles = []
        return {"run": str(self.run.path), "input_kind": "text" if self.takes_text else info.input_kind,
                "input_size": list(size) if size else None, "in_channels": getattr(info, "in_channels", None),
                "generates": self.generating, "backend": self.backend, "heads": heads,
                "roles": [{key: row[key] for key in ("role", "component", "params") if key in row} for row in roles]}
