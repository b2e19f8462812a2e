"""`Model`: wires an encoder, an optional decoder and named heads. It holds no layers of its own."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edh.core.builder import build_component
from edh.core.registry import declared
from edh.core.features import FeatureSpec
from edh.core.spec import HeadSpec, ModelSpec, parse_model_spec
from edh.core.errors import SpecError


class RoleMismatchError(SpecError):
    """Two roles whose contracts do not fit; raised when the model is built."""


_SHAPES = {
    "pyramid": "a pyramid of maps (B, C, H, W)",
    "sequence": "a sequence (B, T, C) with a padding mask",
    "vector": "a vector (B, C)",
}


def _parse_source(source: str) -> tuple[str, int | None]:
    role, _, level = source.partition(".")
    return role, (int(level) if level else None)


def _bind(module: nn.Module, source: nn.Module) -> None:
    """Let a role reference (never own) parameters of the role it reads from, e.g. tied embeddings.

    A role that defines ``bind(source)`` gets it called once its source is built; the parameters
    stay owned by the source, so the state dict, parameter groups and counts hold them once.
    """
    bind = getattr(module, "bind", None)
    if callable(bind):
        bind(source)


class Model(nn.Module):
    """Encoder -> [Decoder] -> Heads.

    ``forward(inputs, **context)`` returns ``{head_name: outputs}``; a model without heads returns
    ``{"decoder": decoder_output}``. ``context`` reaches the decoder and every head (both also get
    ``input_size``, the ``(H, W)`` of an image input).

    Attributes:
        spec: the `ModelSpec` this model was built from (kept in step by head surgery).
        head_specs: per head, its source, weight and target key.
    """

    def __init__(self, spec: ModelSpec, pretrained: bool = True) -> None:
        super().__init__()
        self.spec = spec.model_copy(deep=True)
        enc_options = spec.encoder.options()
        if not pretrained:
            enc_options.pop("weights", None)
        self.encoder = build_component("encoder", spec.encoder.name, enc_options, "encoder")
        self.decoder = None
        if spec.decoder is not None:
            enc_spec = self.encoder.out_spec
            self._check_kind("decoder", spec.decoder.name, self._decoder_accepts(spec.decoder.name), "encoder",
                             spec.encoder.name, enc_spec)
            self.decoder = build_component("decoder", spec.decoder.name, spec.decoder.options(), "decoder", enc_spec)
            _bind(self.decoder, self.encoder)
        self.heads = nn.ModuleDict()
        self.head_specs: dict[str, HeadSpec] = {}
        self._frozen: set[str] = set()
        for name, head_spec in spec.heads.items():
            self._attach_head(name, head_spec)
        self.__dict__["_objective"] = None  # a model without heads: its decoder's objective (`tasks`)
        self.tasks()  # what the model is trained on exists and fits now, not at the first step

    # ---- wiring -------------------------------------------------------------------------------
    @staticmethod
    def _decoder_accepts(name: str) -> tuple[str, ...]:
        from edh.core import registry

        builder = registry.lookup("decoder", name, "decoder.name")
        return declared(builder, "accepts")

    @staticmethod
    def _check_kind(role: str, component: str, accepts: tuple[str, ...], source: str, source_component: str,
                    spec: FeatureSpec) -> None:
        if spec.kind in accepts:
            return
        wanted = " or ".join(_SHAPES[k] for k in accepts)
        raise RoleMismatchError(
            f"{role} {component!r} cannot read from {source} {source_component!r}: the {source} produces "
            f"{_SHAPES[spec.kind]} ({spec.describe()}), but {component!r} needs {wanted}. Pick a "
            f"{role} that accepts a {spec.kind}, or a {source} that produces {accepts[0]} features "
            "(`edh list` shows what fits what)."
        )

    def source_spec(self, source: str, where: str = "") -> FeatureSpec:
        """The `FeatureSpec` a head reading from ``source`` receives."""
        role, level = _parse_source(source)
        if role == "decoder":
            if self.decoder is None:
                raise SpecError(f"{where}: source is 'decoder' but this model has no decoder; use source: encoder")
            spec = self.decoder.out_spec
        else:
            spec = self.encoder.out_spec
        if level is None:
            return spec
        if spec.kind != "pyramid":
            raise RoleMismatchError(f"{where}: source {source!r} names a level, but the {role} gives a {spec.kind}")
        if not -spec.num_levels <= level < spec.num_levels:
            raise RoleMismatchError(
                f"{where}: source {source!r} names level {level}, but the {role} has levels "
                f"0..{spec.num_levels - 1} ({spec.describe()})"
            )
        return spec.level(level)

    def _attach_head(self, name: str, head_spec: HeadSpec) -> None:
        from edh.core import registry

        if not name.isidentifier():
            raise SpecError(f"heads.{name}: a head name must be a Python identifier (letters, digits, _)")
        where = f"heads.{name}"
        in_spec = self.source_spec(head_spec.source, where)
        builder = registry.lookup("head", head_spec.type, f"{where}.type")
        role, _ = _parse_source(head_spec.source)
        component = (self.spec.decoder if role == "decoder" else self.spec.encoder).name
        self._check_kind(f"head {name!r} of type", head_spec.type, declared(builder, "accepts"), role,
                         component, in_spec)
        head = build_component("head", head_spec.type, head_spec.options(), where, in_spec)
        _bind(head, self.decoder if role == "decoder" else self.encoder)
        self.heads[name] = head
        self.head_specs[name] = head_spec

    def forward(self, inputs: Any, **context: Any) -> dict[str, Any]:
        if isinstance(inputs, torch.Tensor):
            self.encoder.check_input(inputs)
        features = self.encoder(inputs)
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:  # decoders and heads may crop to it
            context = {**context, "input_size": tuple(inputs.shape[-2:])}
        decoded = self.decoder(features, **context) if self.decoder is not None else None
        if not len(self.heads):  # the decoder's output is the result
            return {"decoder": decoded}
        outputs = {}
        for name, head in self.heads.items():
            role, level = _parse_source(self.head_specs[name].source)
            source = decoded if role == "decoder" else features
            if level is not None:
                source = [source[level]]
            outputs[name] = head(source, **context)
        return outputs

    # ---- what the workflows train, evaluate and predict ---------------------------------------------
    def tasks(self) -> dict[str, nn.Module]:
        """Name -> the `Head` contract of each task: the heads, or, for a model without heads, the
        decoder's objective (`Decoder.objective`, e.g. ``reconstruction``) under the name ``decoder``.
        The objective holds no parameters and is not a role of the model: its role table shows no head."""
        if len(self.heads):
            return dict(self.heads)
        if self.__dict__["_objective"] is None:
            self.__dict__["_objective"] = self._build_objective()
        return {"decoder": self.__dict__["_objective"]}

    def _build_objective(self) -> nn.Module:
        from edh.core import registry

        objective = self.decoder.objective() if self.decoder is not None else None
        if objective is None:
            reason = (f"the decoder {self.spec.decoder.name!r} needs a head" if self.decoder is not None
                      else "it has no decoder")
            raise SpecError(
                f"a model needs at least one head, or a decoder whose output is the result ({reason}): add "
                "`heads: {label: {type: classification, num_classes: N}}`, or a decoder such as conv_transpose"
            )
        head_type, options = objective
        builder = registry.lookup("head", head_type, "decoder (its objective)")
        self._check_kind("objective", head_type, declared(builder, "accepts"), "decoder", self.spec.decoder.name,
                         self.decoder.out_spec)
        return build_component("head", head_type, options, "decoder (its objective)", self.decoder.out_spec)

    def target_key(self, task: str) -> str:
        """The batch target a task learns from: its spec's ``target``, else its name."""
        spec = self.head_specs.get(task)
        return (spec.target if spec is not None else None) or task

    def loss_weight(self, task: str) -> float:
        spec = self.head_specs.get(task)
        return spec.weight if spec is not None else 1.0

    def bind_data(self, info: Any) -> "Model":
        """Give every task the run's data description (`Head.bind_data`); called by the workflows."""
        for name, head in self.tasks().items():
            head.target_key = self.target_key(name)  # which of the data's targets it learns from
            head.bind_data(info)
        return self

    # ---- role-aware operations ---------------------------------------------------------------
    def roles(self) -> dict[str, nn.Module]:
        """Role name -> module: ``encoder``, ``decoder`` (if any), ``heads.NAME`` for each head."""
        out: dict[str, nn.Module] = {"encoder": self.encoder}
        if self.decoder is not None:
            out["decoder"] = self.decoder
        out.update({f"heads.{name}": head for name, head in self.heads.items()})
        return out

    def _modules_of(self, role: str) -> list[nn.Module]:
        roles = self.roles()
        if role == "heads":
            return list(self.heads.values())
        if role not in roles:
            raise SpecError(f"no role {role!r} in this model; roles are {', '.join(roles)} (or 'heads')")
        return [roles[role]]

    def freeze(self, *roles: str) -> "Model":
        """Stop gradients for ``roles`` and keep their BatchNorm layers in eval mode."""
        for role in roles:
            for module in self._modules_of(role):
                module.requires_grad_(False)
            self._frozen.add(role)
        return self.train(self.training)

    def unfreeze(self, *roles: str) -> "Model":
        for role in roles:
            for module in self._modules_of(role):
                module.requires_grad_(True)
            self._frozen.discard(role)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Model":
        super().train(mode)
        for role in self._frozen:
            for module in self._modules_of(role):
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()
        return self

    def param_groups(self, lr: float | dict[str, float], weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups per role, with per-role learning rates.

        ``lr`` is one float or ``{encoder: .., decoder: .., heads: .., heads.NAME: .., default: ..}``.
        Biases and normalisation weights (1-D tensors) get no weight decay.
        """
        rates = lr if isinstance(lr, dict) else {"default": lr}
        default = rates.get("default", max(rates.values()))
        groups = []
        for role, module in self.roles().items():
            rate = rates.get(role, rates.get(role.split(".")[0], default))
            decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
            no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
            for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, ".no_decay")):
                if params:
                    groups.append({"params": params, "lr": rate, "weight_decay": wd, "name": role + suffix})
        return groups

    def replace_head(self, name: str, head_spec: HeadSpec | dict[str, Any]) -> nn.Module:
        """Swap (or add) the head called ``name``; the encoder and decoder keep their weights."""
        if isinstance(head_spec, dict):
            head_spec = parse_model_spec({"encoder": {"name": "x"}, "heads": {name: head_spec}}).heads[name]
        old = self.heads[name] if name in self.heads else None
        try:
            self._attach_head(name, head_spec)
        except Exception:
            if old is not None:
                self.heads[name] = old
            raise
        self.spec.heads[name] = head_spec
        return self.heads[name]

    def add_head(self, name: str, head_spec: HeadSpec | dict[str, Any]) -> nn.Module:
        if name in self.heads:
            raise SpecError(f"head {name!r} exists already; use replace_head to swap it")
        return self.replace_head(name, head_spec)

    def remove_heads(self, keep: list[str]) -> "Model":
        """Keep only the heads named in ``keep`` (for predict / export)."""
        unknown = [k for k in keep if k not in self.heads]
        if unknown:
            raise SpecError(f"no head named {', '.join(unknown)}; this model has {', '.join(self.heads)}")
        for name in list(self.heads):
            if name not in keep:
                del self.heads[name]
                del self.head_specs[name]
                del self.spec.heads[name]
        return self

    def describe(self, input_size: tuple[int, ...] | None = None):
        """A `edh.inspection.describe.Description` of every role: input, output, parameters, MACs."""
        from edh.inspection.describe import describe_model

        return describe_model(self, input_size)


def build(spec: ModelSpec | dict[str, Any] | None = None, *, encoder: str | dict[str, Any] | None = None,
          decoder: str | dict[str, Any] | None = None, heads: dict[str, Any] | None = None,
          pretrained: bool = True) -> Model:
    """Build a `Model` from a spec, or from role keywords.

    Example:
        >>> edh.build(encoder="resnet18", heads={"label": {"type": "classification", "num_classes": 10}})
    """
    if spec is None:
        if encoder is None:
            raise SpecError("build needs a spec or at least encoder=...")
        as_dict = lambda c: {"name": c} if isinstance(c, str) else c  # noqa: E731
        spec = {"encoder": as_dict(encoder), "decoder": as_dict(decoder) if decoder else None, "heads": heads or {}}
    if isinstance(spec, dict):
        spec = parse_model_spec(spec)
    return Model(spec, pretrained=pretrained)
