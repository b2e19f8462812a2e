"""Specs: a model (and a run) described as data, the same from Python or YAML.

A model spec is ``{encoder: {name, ...}, decoder: {name, ...} | null, heads: {name: {type, ...}}}``.
A run spec adds ``data``, ``train`` and ``trainer``. Options beside ``name`` / ``type`` go to the
component's builder and are checked against its signature when the model is built.

Every number has a range, and a value outside it is a `SpecError` naming the key path, the value and
the range: `SPEC_RANGES` for the spec's own numbers (``train.lr``, ``data.batch_size``, a head's
``weight``...), `edh.core.builder.OPTION_RANGES` for component and dataset options (checked when the
spec is parsed, with ``model.`` key paths, and again when the component is built). Assigning a
``train`` / ``data`` field validates it the same way.

YAML is read only through `edh.core.spec_yaml` (its loader has limits on size, nesting and alias
expansion).
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from edh.core.builder import SEED, Range
from edh.core.errors import SpecError
from edh.core.spec_yaml import load_yaml_text, read_yaml
from edh.core.spec_migrations import migrate_heads
from edh.version import __version__, version_tuple

ROLE_NAMES = ("encoder", "decoder", "heads")

# The allowed range of every number a spec states itself (component options: `edh.core.builder`).
# Keys are key paths; ``heads.*`` stands for any head.
SPEC_RANGES: dict[str, Range] = {
    "train.epochs": Range(ge=1, le=1_000_000),
    "train.lr": Range(gt=0, le=10),
    "train.weight_decay": Range(ge=0, le=10),
    "train.momentum": Range(ge=0, lt=1),
    "train.warmup_epochs": Range(ge=0, le=1_000_000),
    "train.seed": SEED,
    "train.grad_clip": Range(gt=0, le=1_000_000),
    "train.checkpoint_every_n_steps": Range(ge=1, le=1_000_000_000),
    "train.threads": Range(ge=1, le=1024),
    "data.batch_size": Range(ge=1, le=65536),
    "data.num_workers": Range(ge=0, le=256),
    "data.seed": SEED,
    "heads.*.weight": Range(ge=0, le=1_000_000),
}


def _not_bool(allowed: Range, value: Any) -> Any:
    if isinstance(value, bool):  # YAML's yes / true would pass as 1
        raise PydanticCustomError("bool_not_number", "{value} is a boolean, not a number; allowed: {allowed}",
                                  {"value": repr(value), "allowed": str(allowed)})
    return value


def _within(allowed: Range, value: Any) -> Any:
    if value is not None and value not in allowed:
        raise PydanticCustomError("out_of_range", "{value} is out of range; allowed: {allowed}",
                                  {"value": repr(value), "allowed": str(allowed)})
    return value


def _bounded(kind: Any, key: str) -> Any:
    """``kind`` limited to ``SPEC_RANGES[key]`` (booleans refused), with edh's out-of-range message."""
    allowed = SPEC_RANGES[key]
    return Annotated[kind, BeforeValidator(partial(_not_bool, allowed)), AfterValidator(partial(_within, allowed))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Assignable:
    """Assigning a field (``spec.train.epochs = 5``) validates it like the YAML would, as a `SpecError`
    naming ``_path`` + the key."""

    _path: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            raise SpecError(_format_errors(error, self._path, "")) from None


class ComponentSpec(BaseModel):
    """An encoder or decoder: its registered ``name`` and builder options."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class HeadSpec(BaseModel):
    """A head: its registered ``type``, where it reads from, its loss weight and builder options.

    ``source`` is ``encoder``, ``encoder.N`` (pyramid level N) or ``decoder``; ``target`` is the
    key of the batch's targets this head learns from (defaults to the head's name).
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    type: str
    source: str = "encoder"
    weight: _bounded(float, "heads.*.weight") = 1.0
    target: str | None = None

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        role, _, level = value.partition(".")
        if role not in ("encoder", "decoder") or (level and not level.lstrip("-").isdigit()):
            raise ValueError("source must be 'encoder', 'encoder.N' (a pyramid level), 'decoder' or 'decoder.N'")
        return value

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelSpec(_Strict):
    encoder: ComponentSpec
    decoder: ComponentSpec | None = None
    heads: dict[str, HeadSpec] = Field(default_factory=dict)


class DataSpec(_Assignable, BaseModel):
    """A registered dataset ``name`` and its options (batch size, splits, augmentation...).

    The dataset's own options (``image_size``, ``val_fraction``...) are checked against its builder's
    signature and `edh.core.builder.OPTION_RANGES` when the spec is parsed and when the data is built."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, validate_assignment=True)
    _path: ClassVar[str] = "data"
    name: str
    batch_size: _bounded(int, "data.batch_size") = 64
    num_workers: _bounded(int, "data.num_workers") = 0
    seed: _bounded(int, "data.seed") = 0

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSpec(_Assignable, _Strict):
    """How to train. Every number has a range (`SPEC_RANGES`); assigning a field validates it too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)
    _path: ClassVar[str] = "train"
    epochs: _bounded(int, "train.epochs") = 10
    optimizer: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: float | dict[str, float] = 1e-3
    weight_decay: _bounded(float, "train.weight_decay") = 0.01
    momentum: _bounded(float, "train.momentum") = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: _bounded(float, "train.warmup_epochs") = 0.0
    freeze: list[str] = Field(default_factory=list)
    seed: _bounded(int, "train.seed") = 0
    grad_clip: _bounded(float | None, "train.grad_clip") = None
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False
    checkpoint_every_n_steps: _bounded(int | None, "train.checkpoint_every_n_steps") = None
    loss_balancing: Literal["fixed", "uncertainty"] = "fixed"
    threads: _bounded(int | None, "train.threads") = None  # CPU threads; --threads wins; None: $EDH_THREADS / cores

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_is_a_number(cls, value: Any) -> Any:
        """One clear message for a bad lr (rather than one per member of ``float | dict``)."""
        allowed = SPEC_RANGES["train.lr"]
        for item in (value.values() if isinstance(value, dict) else [value]):
            _not_bool(allowed, item)
            if isinstance(item, str):
                try:
                    float(item)
                except ValueError:
                    raise PydanticCustomError(
                        "lr_type", "{value} is not a number; give train.lr as a number (0.001) or per role "
                        "({encoder: 0.0001, heads: 0.001}); allowed: {allowed}",
                        {"value": repr(item), "allowed": str(allowed)}) from None
        items = value.items() if isinstance(value, dict) else [(None, value)]
        wrong = [(k, v) for k, v in items if isinstance(v, (int, float)) and v not in allowed]
        if wrong:
            shown = ", ".join(repr(v) if k is None else f"{k}: {v!r}" for k, v in wrong)
            raise PydanticCustomError("out_of_range", "{value} is out of range; allowed: {allowed}",
                                      {"value": shown, "allowed": str(allowed)})
        return value

    @field_validator("lr")
    @classmethod
    def _check_lr(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        allowed = SPEC_RANGES["train.lr"]
        if isinstance(value, dict):
            bad = [k for k in value if k.split(".")[0] not in ("encoder", "decoder", "heads", "default")]
            if bad:
                raise ValueError(
                    f"per-role lr keys must be encoder, decoder, heads, heads.NAME or default; got {bad}"
                )
            wrong = {k: v for k, v in value.items() if v not in allowed}
            if wrong:
                shown = ", ".join(f"{k}: {v!r}" for k, v in wrong.items())
                raise PydanticCustomError("out_of_range", "{value} is out of range; allowed: {allowed}",
                                          {"value": shown, "allowed": str(allowed)})
        else:
            _within(allowed, value)
        return value

    @model_validator(mode="after")
    def _check_warmup(self) -> "TrainSpec":
        if self.warmup_epochs > self.epochs:
            raise PydanticCustomError(
                "warmup_too_long", "warmup_epochs ({warmup}) is longer than epochs ({epochs}): the learning rate "
                "would never reach train.lr; shorten warmup_epochs or train longer",
                {"warmup": f"{self.warmup_epochs:g}", "epochs": self.epochs})
        return self

    @field_validator("freeze")
    @classmethod
    def _check_freeze(cls, value: list[str]) -> list[str]:
        bad = [k for k in value if k.split(".")[0] not in ("encoder", "decoder", "heads")]
        if bad:
            raise ValueError(f"freeze takes roles (encoder, decoder, heads, heads.NAME); got {bad}")
        return value


class RunSpec(_Strict):
    edh_version: str = __version__
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    trainer: dict[str, Any] = Field(default_factory=dict)
    # experiment loggers: csv (default), tensorboard, mlflow, wandb; a name, a list or {name: options}.
    # Checked by edh.train.loggers.parse_logging (docs/logging.md)
    logging: str | list[Any] | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        return migrate_heads(data)

    @field_validator("edh_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if version_tuple(value) > version_tuple(__version__):
            raise ValueError(
                f"this spec was written by edh {value}, newer than the installed edh {__version__}; "
                "upgrade edh (pip install -U edh) to read it"
            )
        return value


_OWN_MESSAGES = {"out_of_range", "bool_not_number", "warmup_too_long", "lr_type"}  # they show the value themselves
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                 "int_parsing_size"}


def _range_of(path: tuple[Any, ...]) -> Range | None:
    """`SPEC_RANGES` entry of a key path (``model.heads.NAME.weight`` -> ``heads.*.weight``)."""
    parts = [str(p) for p in path]
    if parts[:1] == ["model"]:
        parts = parts[1:]
    if len(parts) == 3 and parts[0] == "heads":
        parts[1] = "*"
    return SPEC_RANGES.get(".".join(parts))


def _format_errors(error: ValidationError, prefix: str, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(p for p in (prefix, *item["loc"]) if p != "")
        path = ".".join(str(p) for p in loc)
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; `edh list` shows each component's options)"
        given = item.get("input")
        allowed = _range_of(loc) if item["type"] in _RANGE_ERRORS else None
        if allowed is not None:
            lines.append(f"  {path}: {given!r} is out of range; allowed: {allowed}")
            continue
        quiet = item["type"] in ("missing", "extra_forbidden", *_OWN_MESSAGES) or isinstance(given, dict)
        shown = "" if quiet else f" (got {_short(given)})"
        lines.append(f"  {path}: {message}{shown}")
    where = f" in {source}" if source else ""
    return f"invalid spec{where}:\n" + "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _lookup(role: str, name: Any) -> Any:
    """The registered builder of ``name``, or None (an unknown name is reported when the model is built,
    with the close matches)."""
    if not isinstance(name, str):
        return None
    from edh.core import registry

    try:
        return registry.lookup(role, name)
    except Exception:  # noqa: BLE001 - unknown names, broken plug-ins: reported when the model is built
        return None


def _option_problems(model: ModelSpec | None, prefix: str, data: DataSpec | None = None) -> list[str]:
    """Numbers among the component options (and the dataset's) outside their ranges
    (`edh.core.builder.range_problems`), as key-path lines. Types and names are checked at build time."""
    from edh.core.builder import range_problems

    lines: list[str] = []
    if model is not None:
        lines += range_problems("encoder", model.encoder.options(), f"{prefix}encoder",
                                _lookup("encoder", model.encoder.name))
        if model.decoder is not None:
            lines += range_problems("decoder", model.decoder.options(), f"{prefix}decoder",
                                    _lookup("decoder", model.decoder.name))
        for name, head in model.heads.items():
            lines += range_problems("head", head.options(), f"{prefix}heads.{name}", _lookup("head", head.type))
    if data is not None:
        lines += range_problems("dataset", data.options(), "data", _lookup("dataset", data.name))
    return lines


def _raise_problems(lines: list[str], source: str) -> None:
    if lines:
        where = f" in {source}" if source else ""
        raise SpecError(f"invalid spec{where}:\n" + "\n".join(lines))


def parse_model_spec(data: dict[str, Any], source: str = "", prefix: str = "") -> ModelSpec:
    """Validate a model spec; a `SpecError` names each bad key path (numbers out of range included)."""
    if not isinstance(data, dict):
        raise SpecError(f"a model spec{' in ' + source if source else ''} must be a mapping, got {type(data).__name__}")
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(error, prefix, source)) from None
    _raise_problems(_option_problems(spec, f"{prefix}." if prefix else ""), source)
    return spec


def parse_run_spec(data: dict[str, Any], source: str = "") -> RunSpec:
    """Validate a run spec; a `SpecError` names each bad key path (numbers out of range included)."""
    if not isinstance(data, dict):
        raise SpecError(f"a run spec{' in ' + source if source else ''} must be a mapping, got {type(data).__name__}")
    try:
        spec = RunSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(error, "", source)) from None
    _raise_problems(_option_problems(spec.model, "model.", spec.data), source)
    return spec


def override(spec: RunSpec, changes: dict[str, Any], source: str = "the command line") -> RunSpec:
    """A copy of ``spec`` with ``{"train.epochs": 5, ...}`` set (None values left out), validated as a
    whole: a `SpecError` naming the key path and ``source``."""
    data = to_dict(spec)
    for key, value in changes.items():
        if value is None:
            continue
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return parse_run_spec(data, source)


def load_spec(path: str | Path) -> ModelSpec | RunSpec:
    """A YAML file holding a run spec (``model:``, ``data:``...) or a bare model spec."""
    data = read_yaml(path)
    if "model" in data or "data" in data:
        return parse_run_spec(data, str(path))
    return parse_model_spec(data, str(path))


def to_dict(spec: BaseModel) -> dict[str, Any]:
    """A plain dict (extras included, ``None`` decoder kept) that parses back to the same spec."""
    return copy.deepcopy(spec.model_dump(mode="json"))


def to_yaml(spec: BaseModel) -> str:
    return yaml.safe_dump(to_dict(spec), sort_keys=False)


def from_yaml(text: str, kind: type[BaseModel] = ModelSpec) -> BaseModel:
    data = load_yaml_text(text)
    return parse_run_spec(data) if kind is RunSpec else parse_model_spec(data)
