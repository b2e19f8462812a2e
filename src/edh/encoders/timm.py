"""``timm:<model>``: any timm model that can return features (``features_only``)."""

from __future__ import annotations

import difflib
from typing import Literal

import torch

from edh.encoders.base import Encoder
from edh.core.features import FeatureSpec
from edh.core.registry import UnknownComponentError, register_encoder
from edh.utils.weights import check_weights_file


@register_encoder("timm")
class TimmEncoder(Encoder):
    """Wraps ``timm.create_model(model_name, features_only=True)``; the spec comes from its ``feature_info``.

    Args:
        model_name: a timm model name (``convnext_tiny``, ``efficientnet_b0``, ``regnety_016``...).
        in_channels: image channels (timm adapts the stem, and pretrained stem weights).
        out_indices: which feature levels to return (timm's default: all).
        weights: a local weight file for that model (``.safetensors`` / ``.pth``), or its id in a local
            cache (``hf-hub:timm/resnet50.a1_in1k``, ``torchvision:ResNet50_Weights.IMAGENET1K_V2``; resolved
            offline by `edh.utils.weight_caches`), loaded by timm (classifier dropped, stem adapted to
            ``in_channels``).
        output_stride: the deepest level's stride, passed to ``timm.create_model``: 16 or 8 dilates
            the deepest stages of models that can (resnet*, convnext*, efficientnet*, mobilenet*...; the
            DeepLab decoders need it); a model that cannot (a ViT, Swin) is an error. Default: the model's own.
        options: more keyword arguments for ``timm.create_model`` (``drop_path_rate``, a ViT's
            ``img_size`` or ``dynamic_img_size``...).

    Shapes: ``(B, in_channels, H, W)`` -> ``[(B, C_i, H / s_i, W / s_i)]`` per timm's ``feature_info``.
    """

    model_option = "model_name"  # `timm:<model>` names fill it

    def __init__(self, model_name: str, in_channels: int = 3, out_indices: list[int] | None = None,
                 weights: str | None = None, output_stride: Literal[8, 16, 32] | None = None,
                 options: dict | None = None) -> None:
        super().__init__()
        import timm

        if model_name not in timm.list_models():
            everything = timm.list_models()
            close = difflib.get_close_matches(model_name, everything, n=5, cutoff=0.6)
            hint = f"did you mean {', '.join('timm:' + c for c in close)}? " if close else ""
            raise UnknownComponentError(
                f"unknown timm model {model_name!r} (encoder name 'timm:{model_name}'). {hint}"
                "`python -c \"import timm; print(timm.list_models('*convnext*'))\"` lists timm's models."
            )
        kwargs = dict(options or {})
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if weights:
            file = check_weights_file(weights, "encoder.weights")  # a cache id becomes its local file
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file)})
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        try:
            self.model = timm.create_model(model_name, features_only=True, in_chans=in_channels, **kwargs)
        except (RuntimeError, AttributeError, TypeError, AssertionError) as error:
            if output_stride is not None and "output_stride" in str(error):
                raise ValueError(
                    f"encoder.output_stride: timm model {model_name!r} cannot change its output stride (it takes "
                    f"no output_stride: {error}). Leave output_stride out, or pick a model that can dilate "
                    "(resnet*, convnext*, efficientnet*, mobilenetv3*...)"
                ) from None
            raise ValueError(
                f"timm model {model_name!r} cannot be an edh encoder: timm cannot build it with "
                f"features_only=True ({error}). Pick a model with a feature pyramid (convnext_*, resnet*, "
                "efficientnet_*, regnet*...)."
            ) from None
        self.in_channels = in_channels
        self.model_name = model_name
        info = self.model.feature_info
        self.out_spec = FeatureSpec("pyramid", tuple(info.channels()), tuple(info.reduction()),
                                    tuple(info.module_name()))
        if output_stride is not None and self.out_spec.strides[-1] > output_stride:
            raise ValueError(
                f"encoder.output_stride is {output_stride}, but timm model {model_name!r} gives strides "
                f"{self.out_spec.strides} with it (it does not dilate to that stride); leave output_stride out or "
                "pick a model that can dilate (resnet*, convnext*, efficientnet*...)"
            )
        self.output_stride = self.out_spec.strides[-1]
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        fixed = cfg.get("fixed_input_size") and cfg.get("input_size") and not kwargs.get("dynamic_img_size")
        size = kwargs.get("img_size")  # a ViT built for another size than its pretrained config's
        size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        self.fixed_input_size = (size or tuple(cfg["input_size"][1:])) if fixed else None
        self.default_input_size = self.fixed_input_size or (224, 224)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))  # [(B, C_i, H / s_i, W / s_i)]
