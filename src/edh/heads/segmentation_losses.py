"""The segmentation head's loss: a name or a weighted sum of named terms, checked when the head is built.

Every term but cross-entropy is segmentation_models_pytorch's (``smp.losses``), imported on the
first ``loss`` call, so a model that only predicts never pays for the import. Every term leaves
out the pixels equal to ``ignore_index``; what else each takes:

- ``ce``: ``F.cross_entropy`` (binary: BCE with logits, `binary_cross_entropy`); ``class_weights``
  weigh each pixel by its class. No options.
- ``dice``, ``jaccard``: smp's ``DiceLoss`` / ``JaccardLoss`` (soft Dice / IoU per class, a class
  absent from the batch counts 0). No options, no class weights.
- ``tversky``: smp's ``TverskyLoss``; ``alpha`` weighs false positives, ``beta`` false negatives
  (defaults 0.3 / 0.7, Salehi et al. 2017; 0.5 / 0.5 is Dice), ``gamma`` > 1 makes it focal Tversky
  (default 1.0). No class weights.
- ``focal``: smp's ``FocalLoss``, a sigmoid focal term per class, one against the rest (Lin et al.
  2017): ``gamma`` (default 2.0), ``alpha`` (default none; the paper's 0.25 weighs each class's
  positives). ``class_weights`` weigh each class's term, in multi-class mode only (smp refuses them
  in binary mode, where ``alpha`` balances the two classes).
- ``lovasz``: smp's ``LovaszLoss``, Lovasz-softmax (binary: Lovasz hinge; Berman et al. 2018):
  ``per_image`` (default false: over the whole batch). No class weights.

Binary mode (one logit channel) runs smp's losses in their ``binary`` mode. Losses are computed
in float32 whatever the outputs' dtype (bf16 under autocast).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch
import torch.nn.functional as F

from edh.core.errors import SpecError

# loss name -> its options and their defaults
LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "ce": {},
    "dice": {},
    "focal": {"gamma": 2.0, "alpha": None},
    "jaccard": {},
    "lovasz": {"per_image": False},
    "tversky": {"alpha": 0.3, "beta": 0.7, "gamma": 1.0},
}
LOSS_NAMES = tuple(LOSS_OPTIONS)
_FORMS = "a name, a sum of names such as 'ce+dice', or weights such as {ce: 1.0, dice: 0.5}"


def _close(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _unknown(name: Any, where: str, what: str, choices: list[str] | tuple[str, ...]) -> SpecError:
    return SpecError(f"{where}: unknown {what} {name!r}{_close(name, choices)}; "
                     f"valid: {', '.join(choices) or 'none'}")


def parse_loss(loss: str | dict[str, float]) -> dict[str, float]:
    """``loss`` as ``{name: weight}``: ``"ce"`` -> ``{ce: 1}``, ``"ce+dice"`` -> ``{ce: 1, dice: 1}``,
    a mapping as given (every weight a finite number > 0)."""
    if isinstance(loss, str):
        names = [part.strip() for part in loss.split("+")]
        weights: dict[str, Any] = {}
        for name in names:
            if name in weights:
                raise SpecError(f"loss: {name!r} appears twice in {loss!r}; give weights instead, "
                                f"e.g. {{{name}: 2.0}}")
            weights[name] = 1.0
    elif isinstance(loss, dict):
        weights = dict(loss)
    else:
        raise SpecError(f"loss: {loss!r} is not a loss; give {_FORMS} (losses: {', '.join(LOSS_NAMES)})")
    if not weights:
        raise SpecError(f"loss: no loss given; give {_FORMS} (losses: {', '.join(LOSS_NAMES)})")
    for name, weight in weights.items():
        if name not in LOSS_OPTIONS:
            raise _unknown(name, "loss", "loss", LOSS_NAMES)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise SpecError(f"loss.{name}: the weight {weight!r} must be a number > 0; "
                            f"leave {name} out of loss to drop it")
    return {name: float(weight) for name, weight in weights.items()}


def _check_value(loss: str, option: str, value: Any) -> Any:
    """``value`` if it is valid for ``loss``'s ``option``, else a `SpecError` saying what is."""
    where = f"loss_options.{loss}.{option}"
    if option == "per_image":
        if not isinstance(value, bool):
            raise SpecError(f"{where}: {value!r} is not true or false")
        return value
    if option == "alpha" and loss == "focal" and value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if option == "gamma" and loss == "focal":
        allowed, ok = "a number >= 0 (0: plain sigmoid cross-entropy)", number and value >= 0
    elif option == "gamma":
        allowed, ok = "a number > 0 (1: plain Tversky)", number and value > 0
    else:  # alpha, beta
        allowed, ok = "a number from 0 to 1", number and 0 <= value <= 1
    if not ok:
        raise SpecError(f"{where}: {value!r} is out of range; allowed: {allowed}")
    return float(value)


def resolve_options(weights: dict[str, float], options: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Each term's options: its defaults, updated by ``options`` (``loss_options``), each checked."""
    options = options or {}
    if not isinstance(options, dict):
        raise SpecError(f"loss_options: {options!r} is not a mapping; give e.g. {{focal: {{gamma: 2.0}}}}")
    for name, given in options.items():
        if name not in LOSS_OPTIONS:
            raise _unknown(name, "loss_options", "loss", LOSS_NAMES)
        if name not in weights:
            raise SpecError(f"loss_options.{name}: the loss has no {name} term (it is {'+'.join(weights)}); "
                            f"add {name} to loss or drop loss_options.{name}")
        if not isinstance(given, dict):
            raise SpecError(f"loss_options.{name}: {given!r} is not a mapping of options "
                            f"({', '.join(LOSS_OPTIONS[name]) or 'it takes none'})")
        for option in given:
            if option not in LOSS_OPTIONS[name]:
                raise _unknown(option, f"loss_options.{name}", f"option of {name}", tuple(LOSS_OPTIONS[name]))
    resolved = {}
    for name in weights:
        merged = {**LOSS_OPTIONS[name], **options.get(name, {})}
        resolved[name] = {option: _check_value(name, option, value) for option, value in merged.items()}
    return resolved


def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                         ignore_index: int | None = None) -> torch.Tensor:
    """BCE with logits over the pixels not equal to ``ignore_index``, averaged as ``F.cross_entropy``
    averages (a weighted mean, ``weight[target]`` per pixel), so it equals cross-entropy on the two
    logits ``[0, x]``. torch's BCE has no ``ignore_index`` and smp's averages over every pixel,
    ignored ones included, hence this.

    Args:
        logits: ``(B, 1, H, W)`` or ``(B, H, W)`` logits of the foreground class.
        targets: ``(B, H, W)`` 0 / 1 (or ``ignore_index``).
        weight: ``(2,)`` background and foreground weight.
    """
    logits = logits.reshape(targets.shape)  # (B, H, W)
    valid = torch.ones_like(targets, dtype=torch.bool) if ignore_index is None else targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))  # (B, H, W) 0 / 1
    per_pixel = F.binary_cross_entropy_with_logits(logits, safe.to(logits.dtype), reduction="none")
    pixel_weight = valid.to(logits.dtype) if weight is None else weight.to(logits.dtype)[safe] * valid
    return (per_pixel * pixel_weight).sum() / pixel_weight.sum()


class SegmentationLoss:
    """The named, weighted loss terms of a segmentation head (not a module: it holds no tensors to save).

    Args:
        loss: a name of `LOSS_NAMES`, a ``+``-joined sum of them, or ``{name: weight}``.
        options: per-loss options (``{focal: {gamma: 2.0}}``); see the module's table.
        binary: one logit channel with a sigmoid (smp's ``binary`` mode) instead of a softmax.
        ignore_index: a target value left out of every term.
        class_weights: one weight per class, for ``ce`` and (multi-class) ``focal``.
    """

    def __init__(self, loss: str | dict[str, float] = "ce", options: dict[str, dict[str, Any]] | None = None,
                 binary: bool = False, ignore_index: int | None = None,
                 class_weights: list[float] | None = None) -> None:
        self.weights = parse_loss(loss)
        self.options = resolve_options(self.weights, options)
        if binary and class_weights is not None and "focal" in self.weights:
            raise SpecError("class_weights: the focal loss takes no class weights in binary mode (smp's FocalLoss "
                            "refuses them); balance it with loss_options.focal.alpha (the foreground's weight, "
                            "e.g. 0.25) and keep class_weights for ce, or set binary: false")
        self.binary = binary
        self.ignore_index = ignore_index
        self.class_weights = list(class_weights) if class_weights is not None else None
        self._smp: dict[str, Any] | None = None

    def _smp_terms(self) -> dict[str, Any]:
        """smp's loss objects for every term but ``ce`` (smp imported here, once)."""
        if self._smp is None:
            from segmentation_models_pytorch import losses

            mode = losses.BINARY_MODE if self.binary else losses.MULTICLASS_MODE
            ignore = self.ignore_index
            made: dict[str, Any] = {}
            for name in self.weights:
                o = self.options[name]
                if name == "dice":
                    made[name] = losses.DiceLoss(mode, ignore_index=ignore)
                elif name == "jaccard":
                    made[name] = losses.JaccardLoss(mode, ignore_index=ignore)
                elif name == "tversky":
                    made[name] = losses.TverskyLoss(mode, ignore_index=ignore, alpha=o["alpha"], beta=o["beta"],
                                                    gamma=o["gamma"])
                elif name == "focal":
                    weights = None if self.binary else self.class_weights
                    made[name] = losses.FocalLoss(mode, alpha=o["alpha"], gamma=o["gamma"], ignore_index=ignore,
                                                  class_weights=weights)
                elif name == "lovasz":
                    made[name] = losses.LovaszLoss(mode, per_image=o["per_image"], ignore_index=ignore)
            self._smp = made
        return self._smp

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor,
                 class_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each term, times its weight.

        Args:
            outputs: ``(B, K, H, W)`` logits (``(B, 1, H, W)`` in binary mode), any float dtype.
            targets: ``(B, H, W)`` class ids.
            class_weights: ``(K,)`` the class weights on the outputs' device (for ``ce``).
        """
        logits = outputs.float()  # (B, K, H, W): every loss in float32
        targets = targets.long()
        if self.ignore_index is not None and not bool((targets != self.ignore_index).any()):
            zero = logits.sum() * 0.0  # every pixel ignored: nothing to learn, and no NaN from 0 / 0
            return {name: zero for name in self.weights}
        smp_terms = self._smp_terms() if any(name != "ce" for name in self.weights) else {}
        terms = {}
        for name, weight in self.weights.items():
            if name == "ce" and self.binary:
                value = binary_cross_entropy(logits, targets, class_weights, self.ignore_index)
            elif name == "ce":
                ignore = -100 if self.ignore_index is None else self.ignore_index
                value = F.cross_entropy(logits, targets, weight=class_weights, ignore_index=ignore)
            else:
                value = smp_terms[name](logits, targets)
            terms[name] = value if weight == 1.0 else weight * value
        return terms
