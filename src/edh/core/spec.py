"""Specs: a model (and a run) described as data, the same from Python or YAML.

A model spec is ``{encoder: {name, ...}, decoder: {name, ...} | null, heads: {name: {type, ...}}}``.
A run spec adds ``data``, ``train`` and ``trainer``. Options beside ``name`` / ``type`` go to the
component's builder and are checked against its signature when the model is built.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edh.core.errors import SpecError
from edh.version import __version__

ROLE_NAMES = ("encoder", "decoder", "heads")




class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    model_config = ConfigDict(extra="allow")
    type: str
    source: str = "encoder"
    weight: float = 1.0
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


class DataSpec(BaseModel):
    """A registered dataset ``name`` and its options (batch size, splits, augmentation...)."""

    model_config = ConfigDict(extra="allow")
    name: str
    batch_size: int = Field(64, gt=0)
    num_workers: int = Field(0, ge=0)
    seed: int = 0

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSpec(_Strict):
    epochs: int = Field(10, gt=0)
    optimizer: Literal["adamw", "sgd", "adam"] = "adamw"
    lr: float | dict[str, float] = 1e-3
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    freeze: list[str] = Field(default_factory=list)
    seed: int = 0
    grad_clip: float | None = None
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False
    checkpoint_every_n_steps: int | None = None
    loss_balancing: Literal["fixed", "uncertainty"] = "fixed"

    @field_validator("lr")
    @classmethod
    def _check_lr(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(value, dict):
            bad = [k for k in value if k.split(".")[0] not in ("encoder", "decoder", "heads", "default")]
            if bad:
                raise ValueError(
                    f"per-role lr keys must be encoder, decoder, heads, heads.NAME or default; got {bad}"
                )
        return value

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

    @field_validator("edh_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if _version_tuple(value) > _version_tuple(__version__):
            raise ValueError(
                f"this spec was written by edh {value}, newer than the installed edh {__version__}; "
                "upgrade edh (pip install -U edh) to read it"
            )
        return value


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _format_errors(error: ValidationError, prefix: str, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; `edh list` shows each component's options)"
        given = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {path}: {message}{shown}")
    where = f" in {source}" if source else ""
    return f"invalid spec{where}:\n" + "\n".join(lines)


def parse_model_spec(data: dict[str, Any], source: str = "", prefix: str = "") -> ModelSpec:
    """Validate a model spec; a `SpecError` names each bad key path."""
    if not isinstance(data, dict):
        raise SpecError(f"a model spec{' in ' + source if source else ''} must be a mapping, got {type(data).__name__}")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(error, prefix, source)) from None


def parse_run_spec(data: dict[str, Any], source: str = "") -> RunSpec:
    """Validate a run spec; a `SpecError` names each bad key path."""
    if not isinstance(data, dict):
        raise SpecError(f"a run spec{' in ' + source if source else ''} must be a mapping, got {type(data).__name__}")
    try:
        return RunSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_errors(error, "", source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SpecError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping (encoder/heads or model/data/train), not {type(data).__name__}")
    return data


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
    data = yaml.safe_load(text)
    return parse_run_spec(data) if kind is RunSpec else parse_model_spec(data)
