"""Turns spec entries into components, checking each option against the builder's signature.

Every numeric option also has a validated range (`option_range`): a builder's own
``Annotated[int, Field(ge=..., le=...)]`` annotation when it declares one, else `OPTION_RANGES`
(by role and option name, then by option name alone). A value outside it (or NaN, or a boolean
where a number is meant) is a `SpecError` naming the key path, the value and the allowed range.
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from edh.core import registry
from edh.core.errors import SpecError

_SKIP = {"self", "in_spec", "args", "kwargs"}


def _target(builder: Any) -> Any:
    return builder.__init__ if inspect.isclass(builder) else builder




# ---- ranges -----------------------------------------------------------------------------------------
def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``ge`` / ``gt`` below, ``le`` / ``lt`` above (None: unbounded).
    NaN is never in a range; infinity only where that side is unbounded."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"{_number(self.ge)} to {_number(self.le)}"
        parts = []
        if self.ge is not None:
            parts.append(f"at least {_number(self.ge)}")
        if self.gt is not None:
            parts.append(f"more than {_number(self.gt)}")
        if self.le is not None:
            parts.append(f"at most {_number(self.le)}")
        if self.lt is not None:
            parts.append(f"less than {_number(self.lt)}")
        return " and ".join(parts) or "any number"


SEED = Range(ge=0, le=2**32 - 1)  # what numpy's and Lightning's seeding take
_PIXELS = Range(ge=1, le=8192)
_WIDTH = Range(ge=1, le=65536)
_DROPOUT = Range(ge=0, lt=1)
_UNIT = Range(ge=0, le=1)
_FRACTION = Range(gt=0, le=1)
_LAYERS = Range(ge=1, le=1024)
_MANY = Range(ge=1, le=1_000_000)
_WEIGHT = Range(ge=0, le=1_000_000)
_TOKEN_ID = Range(ge=0, le=1_000_000)

# Option name -> allowed range, for every component that takes an option of that name (a list of
# numbers: each number). A builder that annotates an option with its own bounds overrides this.
OPTION_RANGES: dict[str, Range] = {
    # classes, outputs, vocabularies
    "num_classes": Range(ge=1, le=100_000), "num_outputs": Range(ge=1, le=100_000), "top_k": Range(ge=1, le=100_000),
    "vocab_size": Range(ge=1, le=1_000_000),
    # sizes in pixels, channels, widths, depths
    "image_size": _PIXELS, "crop_size": _PIXELS, "sprite_size": _PIXELS, "in_channels": Range(ge=1, le=1024),
    "out_channels": _WIDTH, "channels": _WIDTH, "decoder_channels": _WIDTH, "base_width": _WIDTH, "width": _WIDTH,
    "d_model": _WIDTH, "latent_dim": _WIDTH, "representation_size": _WIDTH, "ffn_dim": Range(ge=1, le=262_144),
    "hidden": Range(ge=0, le=65536), "num_heads": _LAYERS, "num_layers": _LAYERS, "depth": Range(ge=1, le=1000),
    "num_convs": Range(ge=0, le=64), "conv_depth": Range(ge=1, le=64),
    "levels": Range(ge=-16, le=16), "out_indices": Range(ge=-16, le=16), "roi_levels": Range(ge=1, le=16),
    "roi_output_size": Range(ge=1, le=256), "sampling_ratio": Range(ge=-1, le=64),
    "max_len": _MANY, "max_tokens": Range(ge=2, le=1_000_000), "max_new_tokens": _MANY,
    # probabilities, fractions, thresholds
    "dropout": _DROPOUT, "attention_dropout": _DROPOUT, "label_smoothing": _DROPOUT,
    "val_fraction": _DROPOUT, "test_fraction": _DROPOUT,
    "score_thresh": _UNIT, "nms_thresh": _UNIT, "rpn_nms_thresh": _UNIT,
    "fg_iou_thresh": _UNIT, "bg_iou_thresh": _UNIT, "box_fg_iou_thresh": _UNIT, "box_bg_iou_thresh": _UNIT,
    "rpn_fg_iou_thresh": _UNIT, "rpn_bg_iou_thresh": _UNIT,
    "positive_fraction": _FRACTION, "box_positive_fraction": _FRACTION, "rpn_positive_fraction": _FRACTION,
    "prior_probability": Range(gt=0, lt=1),
    # loss weights and search settings
    "kl_weight": _WEIGHT, "class_weights": _WEIGHT, "length_penalty": Range(ge=0, le=100),
    "beam_size": Range(ge=1, le=1000),
    # detection counts and box sizes
    "max_detections": Range(ge=1, le=100_000), "topk_candidates": _MANY, "batch_size_per_image": _MANY,
    "box_batch_size_per_image": _MANY, "rpn_batch_size_per_image": _MANY, "pre_nms_top_n": _MANY,
    "post_nms_top_n": _MANY, "rpn_pre_nms_top_n": _MANY, "rpn_post_nms_top_n": _MANY,
    "anchor_sizes": Range(gt=0, le=100_000), "aspect_ratios": Range(gt=0, le=1000),
    "center_sampling_radius": Range(gt=0, le=1000), "size_ranges": Range(ge=0),  # the last range may end at .inf
    # token ids
    "pad_id": _TOKEN_ID, "bos_id": _TOKEN_ID, "eos_id": _TOKEN_ID,
    # data
    "seed": SEED, "noise": Range(ge=0, le=100), "objects": Range(ge=0, le=10_000),
    "num_train": Range(ge=1, le=100_000_000), "num_val": Range(ge=0, le=100_000_000),
    "num_test": Range(ge=0, le=100_000_000), "limit": Range(ge=1, le=1_000_000_000),
    "max_number": Range(ge=1, le=10**12), "min_words": Range(ge=1, le=100_000), "max_words": Range(ge=1, le=100_000),
    "source_column": Range(ge=0, le=10_000), "target_column": Range(ge=0, le=10_000),
    "mean": Range(ge=-1000, le=1000), "std": Range(gt=0, le=1000),
}

# (role, option name) -> range, where one role means something narrower than the name alone.
ROLE_OPTION_RANGES: dict[tuple[str, str], Range] = {
    ("dataset", "num_classes"): Range(ge=2, le=100_000),  # image-masks: background + at least one class
    ("dataset", "vocab_size"): Range(ge=8, le=1_000_000),  # a tokenizer: special tokens + some text
}

_BOUNDS = {"ge": "ge", "gt": "gt", "le": "le", "lt": "lt"}


def _hints(builder: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(_target(builder), include_extras=True)
    except Exception:  # unresolvable annotations: accept anything for those options
        return {}


def _declared_range(hint: Any) -> Range | None:
    """The bounds an ``Annotated[..., Field(ge=...)]`` (or annotated_types ``Ge(...)``) hint states."""
    if typing.get_origin(hint) is not typing.Annotated:
        for arg in typing.get_args(hint):  # Optional[Annotated[...]]
            found = _declared_range(arg)
            if found is not None:
                return found
        return None
    bounds: dict[str, float] = {}
    for meta in hint.__metadata__:
        items = list(getattr(meta, "metadata", [])) + [meta]  # a FieldInfo holds annotated_types objects
        for item in items:
            for name in _BOUNDS:
                value = getattr(item, name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    bounds[name] = value
    return Range(**bounds) if bounds else None


def option_range(role: str | None, name: str, builder: Any = None) -> Range | None:
    """The allowed range of option ``name`` of a ``role`` component (``builder``'s own annotation
    first, then `ROLE_OPTION_RANGES`, then `OPTION_RANGES`); None for an option without one."""
    if builder is not None:
        hint = _hints(builder).get(name)
        if hint is not None:
            own = _declared_range(hint)
            if own is not None:
                return own
    return ROLE_OPTION_RANGES.get((role, name)) or OPTION_RANGES.get(name)


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(_holds_bool(v) for v in value[:10_000])


def _takes_bool(hint: Any) -> bool:
    return hint is bool or hint is Any or "bool" in str(hint)


def range_problems(role: str | None, options: dict[str, Any], where: str, builder: Any = None) -> list[str]:
    """One line per number in ``options`` outside its option's range (lists: each entry), and per NaN.
    ``where`` is the key path of the component (``model.heads.label``, ``data``)."""
    hints = _hints(builder) if builder is not None else {}
    lines: list[str] = []

    def walk(value: Any, path: str, allowed: Range | None, takes_bool: bool) -> None:
        if isinstance(value, bool):
            if allowed is not None and not takes_bool:
                lines.append(f"  {path}: {value!r} is a boolean, not a number; allowed: {allowed}")
            return
        if isinstance(value, (int, float)):
            if isinstance(value, float) and math.isnan(value):
                hint = f"allowed: {allowed}" if allowed else "give a number"
                lines.append(f"  {path}: NaN is not a number; {hint}")
            elif allowed is not None and value not in allowed:
                lines.append(f"  {path}: {value!r} is out of range; allowed: {allowed}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value[:10_000]):
                walk(item, f"{path}[{index}]", allowed, takes_bool)

    out: list[str] = []
    for name, value in options.items():
        if not isinstance(name, str):
            continue
        hint = hints.get(name)
        allowed = option_range(role, name, builder)
        lines.clear()
        path = f"{where}.{name}" if where else name
        walk(value, path, allowed, builder is None or _takes_bool(hint))
        out += lines[:5]
        if len(lines) > 5:
            out.append(f"  {path}: and {len(lines) - 5} more numbers out of range")
    return out


# ---- options ----------------------------------------------------------------------------------------
def option_names(builder: Any) -> set[str]:
    """The options ``builder`` takes (its keyword parameters, ``in_spec`` and ``self`` left out)."""
    return {name for name, param in inspect.signature(_target(builder)).parameters.items()
            if name not in _SKIP and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)}


def _signature_model(builder: Any, title: str):
    target = _target(builder)
    hints = _hints(builder)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in _SKIP or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(title, __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def accepted_options(builder: Any) -> dict[str, str]:
    """Option name -> ``type = default`` text, for ``edh list`` and error messages."""
    target = _target(builder)
    out = {}
    for name, param in inspect.signature(target).parameters.items():
        if name in _SKIP or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else ""
        default = "" if param.default is inspect.Parameter.empty else f" = {param.default!r}"
        out[name] = f"{_plain(annotation)}{default}".strip()
    return out


def _plain(annotation: Any) -> str:
    """A type annotation as a user reads it: ``Annotated[int, Field(ge=1)]`` shows as ``int``."""
    import re

    text = annotation if isinstance(annotation, str) else str(annotation)
    while "Annotated[" in text:
        text = re.sub(r"Annotated\[([^\[\],]+(?:\[[^\[\]]*\])?), Field\([^()]*\)\]", r"\1", text, count=1)
        if "Annotated[" in text and not re.search(r"Annotated\[[^\[\],]+(?:\[[^\[\]]*\])?, Field\(", text):
            break
    return text


_CONSTRAINT_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
                      "int_parsing_size"}


def validate_options(builder: Any, options: dict[str, Any], where: str, component: str,
                     role: str | None = None) -> dict[str, Any]:
    """Options checked (and coerced) against ``builder``'s signature and their ranges; `SpecError`
    naming the key path, the value and, for a number out of range, the allowed range."""
    role = role or component.split(" ", 1)[0]
    model = _signature_model(builder, component)
    lines: list[str] = []
    failed: set[str] = set()
    try:
        validated = model.model_validate(options)
    except ValidationError as error:
        accepted = ", ".join(accepted_options(builder)) or "none"
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            name = str(item["loc"][0]) if item["loc"] else key
            failed.add(name)
            allowed = option_range(role, name, builder)
            if item["type"] == "extra_forbidden":
                hint = (getattr(builder, "unknown_option_hint", "") or "").strip()
                lines.append(f"  {where}.{key}: {component} has no option {key!r}; it accepts: {accepted}"
                             + (f". {hint}" if hint else ""))
            elif item["type"] == "missing":
                lines.append(f"  {where}.{key}: required by {component} but missing")
            elif item["type"] in _CONSTRAINT_ERRORS and allowed is not None:
                lines.append(f"  {where}.{key}: {item.get('input')!r} is out of range; allowed: {allowed}")
            else:
                lines.append(f"  {where}.{key}: {item['msg']} (got {item.get('input')!r})")
        values = {k: v for k, v in options.items() if k not in failed}
    else:  # the coerced values, but as given where a boolean hides (pydantic turns True into 1)
        values = {name: options[name] if _holds_bool(options[name]) else getattr(validated, name) for name in options}
    lines += [line for line in range_problems(role, values, where, builder) if line not in lines]
    weights = options.get("weights")
    if _edh_builder(builder) and isinstance(weights, str) and not weights.strip() and "weights" not in failed:
        lines.append(f"  {where}.weights: an empty path; give a weights file, or leave weights out to start "
                     "from random weights")
    if lines:
        raise SpecError("invalid spec:\n" + "\n".join(lines))
    return {name: getattr(validated, name) for name in options}


def _edh_builder(builder: Any) -> bool:
    """One of edh's own builders, whose ``weights`` option is always a local file."""
    return str(getattr(builder, "__module__", "")).startswith("edh.")


def build_component(role: str, name: str, options: dict[str, Any], where: str, *args: Any) -> Any:
    """Look up ``name`` in ``role``'s registry, validate ``options``, call the builder.

    A ``weights`` file of an edh component is checked before the builder opens it
    (`edh.utils.weights.check_weights_file`: a directory, a FIFO or a text file each get their own
    message) and the built component's tensors after (NaN / Inf are refused, naming them). A head
    remembers its key path as ``spec_path`` (``heads.label``), which its ``bind_data`` names in messages.
    """
    builder = registry.lookup(role, name, where)
    _, model = registry.family(role, name)
    option = registry.declared(builder, "model_option")
    if model is not None and option:  # ``timm:convnext_tiny`` fills the timm encoder's ``model_name``
        options = {option: model, **options}
    clean = validate_options(builder, options, where, f"{role} {name!r}", role)
    weights = clean.get("weights") if _edh_builder(builder) else None  # a plug-in's ``weights`` may mean more
    if isinstance(weights, str):
        from edh.utils.weights import check_weights_file

        check_weights_file(weights, f"{where}.weights")
    component = builder(*args, **clean)
    if isinstance(weights, str) and hasattr(component, "state_dict"):
        from edh.utils.weights import refuse_non_finite

        refuse_non_finite(component.state_dict(), f"{weights} (loaded as {where}.weights)")
    if role == "head":
        try:
            component.spec_path = where
        except (AttributeError, TypeError):  # a builder whose result takes no attributes
            pass
    return component
