"""The shared role tester: every registered encoder, decoder and head is checked the same way.

``TINY`` maps each registered ``(role, name)`` to a `Case`: the component's tiny options and what it
is tested on (the tiny encoder / decoder it reads, the input size, the task's context and synthetic
targets). `Rig` wires one case as `edh.core.model.Model` wires it (``build_component``, then
``bind`` to the source role) and runs it on a batch of two. A component registered without an entry
here fails ``test_every_registered_component_has_a_tiny_case``: a new component adds its case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from edh.core import registry
from edh.core.builder import build_component
from edh.core.features import FeatureSpec, Sequence

ROLES = ("encoder", "decoder", "head")
BATCH = 2
PROBE_BATCH = 3  # another batch size: ONNX graphs are checked at it (dynamic batch axis)
VOCAB = 50  # token models: vocabulary; ids 0 / 1 / 2 are pad / bos / eos
PAD, BOS = 0, 1

Tree = Any  # tensors nested in lists, tuples, NamedTuples, dataclasses and dicts


# ---- synthetic inputs, context and targets --------------------------------------------------------------
def token_ids(batch: int, length: int, first: int | None = None) -> torch.Tensor:
    """``(batch, length)`` ids in ``3..VOCAB-1``, ``first`` at position 0; the second row ends in padding."""
    ids = torch.randint(3, VOCAB, (batch, length))
    if first is not None:
        ids[:, 0] = first
    if batch > 1:
        ids[1, -2:] = PAD
    return ids


def waveforms(batch: int, samples: int) -> torch.Tensor:
    """``(batch, samples)`` quiet noise; the second row ends in zero padding (a shorter clip)."""
    waves = 0.1 * torch.randn(batch, samples)
    if batch > 1:
        waves[1, -samples // 4:] = 0.0
    return waves


def decoder_input(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """A seq2seq decoder's context: the target prefix ``(B, 5)``, ``bos`` first."""
    return {"decoder_input": token_ids(inputs.shape[0], 5, first=BOS)}


def next_tokens(inputs: torch.Tensor, context: dict[str, Any]) -> dict[str, torch.Tensor]:
    """LM targets: the prefix shifted left, ``pad`` where the prefix is padding."""
    prefix = context["decoder_input"]
    targets = torch.cat([prefix[:, 1:], torch.randint(3, VOCAB, (prefix.shape[0], 1))], dim=1)
    return {"tokens": targets.masked_fill(prefix == PAD, PAD)}


def masks(inputs: torch.Tensor, context: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Segmentation targets: a class id 0..2 per input pixel."""
    return {"mask": torch.randint(0, 3, (inputs.shape[0], *inputs.shape[-2:]))}


def detection_targets(inputs: torch.Tensor, context: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
    """Per image boxes (x1, y1, x2, y2 in input pixels) and labels 1..3, as detection data collates them."""
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 50.0]]), torch.tensor([[10.0, 10.0, 40.0, 44.0]])]
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    return {"boxes": boxes[:inputs.shape[0]], "labels": labels[:inputs.shape[0]]}


# ---- the table -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """How one component is tested.

    Attributes:
        options: the component's tiny options (as in a spec).
        size: the input: image ``(H, W)``, or token count ``(S,)`` for a token encoder.
        encoder: ``(name, options)`` of the encoder a decoder or head is built on.
        decoder: ``(name, options)`` of the decoder a head reads (``source: decoder``); None: the encoder.
        context: inputs -> what the task adds to the forward besides ``input_size`` (``decoder_input``).
        targets: (inputs, context) -> the batch's target dict (heads; read with ``select_targets``).
        target: the head's target key (``heads.NAME.target``).
        no_grad: parameter name prefix -> why it legitimately gets no gradient in this case.
        not_finite: output name (as `edh.export.flatten` names it) -> why it may hold Inf / NaN.
        export: ``dynamic`` (ONNX graph with a dynamic batch axis, checked at another batch size),
            ``fixed`` (traced and checked at the same batch size, on other values) or ``none``.
        export_note: why the export is ``fixed`` or ``none``.
        xfail: test name -> reason, for a contract failure that is reported and visible (strict xfail).
    """

    options: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, ...] = (32, 48)
    encoder: tuple[str, dict[str, Any]] | None = None
    decoder: tuple[str, dict[str, Any]] | None = None
    context: Callable[[torch.Tensor], dict[str, Any]] | None = None
    targets: Callable[[torch.Tensor, dict[str, Any]], dict[str, Any]] | None = None
    target: str = "target"
    no_grad: dict[str, str] = field(default_factory=dict)
    not_finite: dict[str, str] = field(default_factory=dict)
    export: str = "dynamic"
    export_note: str = ""
    xfail: dict[str, str] = field(default_factory=dict)


CONV = ("conv", {"channels": [4, 8]})  # 1-channel images, strides 1, 2
TEST_RESNET = ("test_resnet", {})  # 3-channel images, strides 2..32
FPN = ("fpn", {"out_channels": 16})  # on test_resnet: strides 4..64, 16 channels
TEXT = ("transformer", {"vocab_size": VOCAB, "preset": "tiny"})
DETECTION = dict(size=(64, 64), encoder=TEST_RESNET, decoder=FPN, targets=detection_targets, target="boxes")
ANCHORS = [[16], [32], [64], [128], [256]]
DEEPER = ("the same ResNetEncoder and {1} blocks as {0}, whose export is checked, only deeper: a {2} MB graph "
          "adds seconds of serialising and no new op")

TINY: dict[tuple[str, str], Case] = {
    # encoders
    ("encoder", "conv"): Case(CONV[1]),
    ("encoder", "resnet18"): Case(),
    ("encoder", "resnet34"): Case(export="none", export_note=DEEPER.format("resnet18", "BasicBlock", 85)),
    ("encoder", "resnet50"): Case(),
    ("encoder", "resnet101"): Case(size=(32, 32), export="none",
                                   export_note=DEEPER.format("resnet50", "Bottleneck", 170)),
    ("encoder", "test_resnet"): Case(),
    # timm zero-inits the last BatchNorm of each residual branch (zero_init_last): at step 0 no gradient
    # would reach the branch's other layers. Off here, so every parameter is checked.
    ("encoder", "timm"): Case({"model_name": "test_resnet", "options": {"zero_init_last": False}}),
    ("encoder", "transformer"): Case(TEXT[1], size=(7,)),
    ("encoder", "unet_encoder"): Case({"base_width": 4, "depth": 3, "norm": True}),
    # decoders
    ("decoder", "conv_transpose"): Case({"out_channels": 1}, size=(16, 24), encoder=CONV),
    ("decoder", "fpn"): Case(FPN[1], encoder=TEST_RESNET),
    ("decoder", "transformer"): Case(TEXT[1], size=(7,), encoder=TEXT, context=decoder_input),
    ("decoder", "unet"): Case({"decoder_channels": [16, 8, 8, 8, 8]}, encoder=TEST_RESNET),
    # heads
    ("head", "classification"): Case({"num_classes": 3}, size=(16, 16), encoder=CONV, target="label",
                                     targets=lambda inputs, context: {"label": torch.tensor([0, 2, 1])[:len(inputs)]}),
    ("head", "regression"): Case({"num_outputs": 2, "hidden": 8}, size=(16, 16), encoder=CONV, target="count",
                                 targets=lambda inputs, context: {"count": torch.randn(len(inputs), 2)}),
    ("head", "segmentation"): Case({"num_classes": 3, "loss": "ce+dice"}, encoder=TEST_RESNET, target="mask",
                                   targets=masks),
    ("head", "rpn"): Case({"anchor_sizes": ANCHORS, "score_thresh": 0.0, "pre_nms_top_n": [200, 100],
                           "post_nms_top_n": [100, 50]}, **DETECTION, export="fixed",
                          export_note="per-image proposal lists: traced at one batch size (as `edh export`)"),
    ("head", "faster_rcnn"): Case({"num_classes": 3, "representation_size": 32, "anchor_sizes": ANCHORS,
                                   "rpn_pre_nms_top_n": [200, 100], "rpn_post_nms_top_n": [100, 50],
                                   "box_batch_size_per_image": 64}, **DETECTION, export="fixed",
                                  export_note="per-image proposal lists: traced at one batch size (as `edh export`)"),
    ("head", "fcos"): Case({"num_classes": 3, "num_convs": 1, "levels": [1, 2, 3]}, **DETECTION,
                           not_finite={"grid.upper": "the last level learns boxes up to any size (FCOS: infinity)"}),
    # untied, so the head owns weights to check; tied (the default) it owns none: its weight is the decoder's
    # token embedding, itself the encoder's (shared)
    ("head", "lm"): Case({"vocab_size": VOCAB, "tie_embeddings": False, "bias": True}, size=(7,), encoder=TEXT,
                         decoder=TEXT, context=decoder_input, targets=next_tokens, target="tokens"),
    ("head", "reconstruction"): Case({"out_channels": 1, "image_size": [16, 16]}, size=(16, 16), encoder=CONV,
                                     decoder=("conv_transpose", {"out_channels": 1, "latent_dim": 4,
                                                                 "variational": True, "image_size": 16}),
                                     targets=lambda inputs, context: {"inputs": inputs}, target="image"),
}

# the cases of the sequence (RNN) and speech components live beside this table, one file per family
from cases_rnn import CASES as _RNN_CASES  # noqa: E402
from cases_speech import CASES as _SPEECH_CASES  # noqa: E402
from cases_seg_a import CASES as _SEG_A_CASES  # noqa: E402
from cases_seg_b import CASES as _SEG_B_CASES  # noqa: E402
from cases_yolo import CASES as _YOLO_CASES  # noqa: E402
from cases_mask import CASES as _MASK_CASES  # noqa: E402

TINY.update(_RNN_CASES)
TINY.update(_SPEECH_CASES)
TINY.update(_SEG_A_CASES)
TINY.update(_SEG_B_CASES)
TINY.update(_YOLO_CASES)
TINY.update(_MASK_CASES)


def registered(role: str) -> list[str]:
    return registry.names(role)


def is_edh_component(role: str, name: str) -> bool:
    """Registered by edh itself (its builder lives in the ``edh`` package), not by a plug-in distribution:
    plug-ins test their own components."""
    module = getattr(registry.lookup(role, name), "__module__", None) or ""
    return module == "edh" or module.startswith("edh.")


def all_registered() -> list[tuple[str, str]]:
    """``(role, name)`` of every encoder, decoder and head edh registers."""
    return [(role, name) for role in ROLES for name in registered(role) if is_edh_component(role, name)]


def missing_cases() -> list[str]:
    """Registered components without a case in `TINY`."""
    return [f"{role} {name!r}" for role, name in all_registered() if (role, name) not in TINY]


def stale_cases() -> list[str]:
    """Cases in `TINY` of components no longer registered."""
    return [f"{role} {name!r}" for role, name in TINY if name not in registered(role)]


def tiny_options(role: str, name: str) -> dict[str, Any]:
    return dict(TINY[(role, name)].options)


# ---- checks ----------------------------------------------------------------------------------------------
def check_matches_spec(spec: FeatureSpec, output: Any, input_size: tuple[int, ...], batch: int | None = None) -> None:
    """The real output has exactly the kinds, channels, strides (or length) the spec promised.

    ``input_size``: the image ``(H, W)`` for a pyramid, the sequence length ``(T,)`` for a sequence.
    """
    if spec.kind == "pyramid":
        assert isinstance(output, (list, tuple)) and not isinstance(output, Sequence), type(output)
        assert len(output) == spec.num_levels, f"{len(output)} levels, spec has {spec.num_levels}"
        for level, (tensor, channels, stride) in enumerate(zip(output, spec.channels, spec.strides)):
            expected = (channels, -(-input_size[0] // stride), -(-input_size[1] // stride))
            assert tuple(tensor.shape[1:]) == expected, f"level {level}: {tuple(tensor.shape)} vs {expected}"
            assert batch is None or tensor.shape[0] == batch
    elif spec.kind == "sequence":
        assert isinstance(output, Sequence), f"a sequence spec but the output is a {type(output).__name__}"
        features, mask = output
        assert features.ndim == 3 and features.shape[-1] == spec.width, f"{tuple(features.shape)} vs width {spec.width}"
        if input_size:
            assert features.shape[1] == input_size[0], f"length {features.shape[1]}, input length {input_size[0]}"
        assert mask is None or (mask.dtype == torch.bool and mask.shape == features.shape[:2]), mask
        assert batch is None or features.shape[0] == batch
    else:
        assert output.ndim == 2 and output.shape[-1] == spec.width
        assert batch is None or output.shape[0] == batch


def check_finite(outputs: Tree, allowed: dict[str, str] | None = None) -> None:
    """Every float tensor of ``outputs`` is finite, but those named in ``allowed`` (a case's ``not_finite``)."""
    from edh.export.flatten import flatten

    names, tensors, _ = flatten(outputs)
    floats = {n: t for n, t in zip(names, tensors) if t.is_floating_point()}
    assert floats, "no float outputs"
    bad = [n for n, t in floats.items() if n not in (allowed or {}) and not torch.isfinite(t).all()]
    assert not bad, f"non-finite values in {bad}"
    stale = [n for n in allowed or {} if n not in floats]
    assert not stale, f"not_finite names outputs that do not exist: {stale} (outputs: {list(floats)})"


def flat_tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in flat_tensors(getattr(value, name))]
    return []


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Tree) -> Tree:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_tensors(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(fn, v) for v in tree)
    return tree


def leaves(tree: Tree) -> Tree:
    """Float tensors detached into leaves that require grad (to see what reaches them)."""
    return map_tensors(lambda t: t.detach().requires_grad_() if t.is_floating_point() else t, tree)


def weighted_sum(outputs: Tree) -> torch.Tensor:
    """A random projection of every float output to one number (a plain sum can cancel: a LayerNorm's
    output sums to a constant)."""
    tensors = [t for t in flat_tensors(outputs) if t.is_floating_point() and t.requires_grad]
    assert tensors, "no output carries a gradient"
    generator = torch.Generator().manual_seed(0)
    return sum((t * torch.randn(t.shape, generator=generator)).sum() for t in tensors)


def bind(module: nn.Module, source: nn.Module) -> None:
    """As `Model` does: a role with ``bind(source)`` references its source's parameters (tied embeddings)."""
    hook = getattr(module, "bind", None)
    if callable(hook):
        hook(source)


# ---- one component, wired ---------------------------------------------------------------------------------
class Rig:
    """A component built as a `Model` builds it, with its source roles (in eval mode) in front.

    ``component`` reads ``inputs`` (an encoder) or ``features`` (the output of its source roles);
    ``context`` holds ``input_size`` for images and what the case adds (``decoder_input``).
    """

    def __init__(self, role: str, name: str) -> None:
        if (role, name) not in TINY:
            raise AssertionError(f"{role} {name!r} is registered but has no case in tests/roles.py TINY; add its tiny "
                                 "options and what it is tested on")
        self.role, self.name, self.case = role, name, TINY[(role, name)]
        self.encoder = self.decoder = None
        if role == "encoder":
            self.component = build_component("encoder", name, self.options(), "encoder")
            self.source: nn.Module | None = None
            self.in_spec = None
            self.image = self.component.input_kind == "image"
            self.in_channels = getattr(self.component, "in_channels", 0)
            return
        if self.case.encoder is None:
            raise AssertionError(f"the case of {role} {name!r} names no encoder to build it on")
        self.encoder = build_component("encoder", self.case.encoder[0], dict(self.case.encoder[1]), "encoder").eval()
        if role == "head" and self.case.decoder is not None:
            self.decoder = build_component("decoder", self.case.decoder[0], dict(self.case.decoder[1]), "decoder",
                                           self.encoder.out_spec).eval()
            bind(self.decoder, self.encoder)
        self.source = self.decoder if self.decoder is not None else self.encoder
        self.in_spec = self.source.out_spec
        accepts = getattr(registry.lookup(role, name), "accepts", ())
        assert self.in_spec.kind in accepts, \
            f"the case builds {role} {name!r} on a {self.in_spec.kind}; it accepts {accepts}"
        self.image = self.encoder.input_kind == "image"
        self.in_channels = self.encoder.in_channels
        self.component = self.build()

    def options(self) -> dict[str, Any]:
        return dict(self.case.options)

    def build(self) -> nn.Module:
        """A new component of this case (random weights), bound to the same source roles."""
        if self.role == "encoder":
            return build_component("encoder", self.name, self.options(), "encoder")
        where = "decoder" if self.role == "decoder" else f"heads.{self.case.target}"
        component = build_component(self.role, self.name, self.options(), where, self.in_spec)
        bind(component, self.source)
        return component

    # ---- a batch ---------------------------------------------------------------------------------
    def inputs(self, batch: int = BATCH) -> torch.Tensor:
        if self.image:
            return torch.randn(batch, self.in_channels, *self.case.size)
        if self.input_encoder.input_kind == "audio":
            return waveforms(batch, self.case.size[0])
        return token_ids(batch, self.case.size[0])

    def context(self, inputs: torch.Tensor) -> dict[str, Any]:
        context = dict(self.case.context(inputs)) if self.case.context else {}
        if self.image:
            context["input_size"] = tuple(inputs.shape[-2:])
        return context

    def targets(self, inputs: torch.Tensor, context: dict[str, Any]) -> dict[str, Any]:
        assert self.case.targets is not None, f"head {self.name!r} has no synthetic targets in its case"
        return self.case.targets(inputs, context)

    @torch.no_grad()
    def features(self, inputs: torch.Tensor, context: dict[str, Any]) -> Tree:
        """What the component reads: the inputs (an encoder) or its source roles' output."""
        if self.role == "encoder":
            return inputs
        features = self.encoder(inputs)
        if self.decoder is not None:
            features = self.decoder(features, **context)
        return features

    def output_size(self, inputs: torch.Tensor, context: dict[str, Any]) -> tuple[int, ...]:
        """What ``check_matches_spec`` measures the output against: image size, or the sequence length."""
        if self.image:
            return tuple(inputs.shape[-2:])
        if "decoder_input" in context and self.role != "encoder":
            return (context["decoder_input"].shape[1],)
        if self.input_encoder.input_kind == "audio":  # frames after the encoder's subsampling
            return (self.input_encoder.output_length(inputs.shape[1]),)
        return (inputs.shape[1],)

    @property
    def input_encoder(self) -> nn.Module:
        """The encoder that reads the inputs: the component itself, or the one it is built on."""
        return self.component if self.role == "encoder" else self.encoder

    def run(self, component: nn.Module, features: Tree, context: dict[str, Any]) -> Tree:
        if self.role == "encoder":
            return component(features)
        return component(features, **context)


class Stage(nn.Module):
    """``{"output": component(features, **context)}`` with the features and context tensors as flat
    inputs: what the ONNX check exports.

    Attributes:
        keep: positions of the flat inputs the graph takes; the others (tensors the component does not
            read, which the exporter drops from the graph) come from ``fill``, the batch being run.
    """

    def __init__(self, rig: Rig, layout: Any, names: list[str], constants: dict[str, Any], count: int) -> None:
        super().__init__()
        self.component, self.role, self.layout = rig.component, rig.role, layout
        self.source = rig.source  # owns what the component only references (a shared embedding): graph weights
        self.names, self.constants = names, constants
        self.keep: list[int] = list(range(count))
        self.fill: list[torch.Tensor] = []

    def pick(self, values: list[Any]) -> list[Any]:
        return [values[i] for i in self.keep]

    def forward(self, *kept: torch.Tensor) -> Tree:
        from edh.export.flatten import unflatten

        tensors = list(self.fill)
        for position, tensor in zip(self.keep, kept):
            tensors[position] = tensor
        count = len(tensors) - len(self.names)
        features = unflatten(self.layout, tensors[:count])
        if self.role == "encoder":
            return {"output": self.component(features)}
        return {"output": self.component(features, **self.constants, **dict(zip(self.names, tensors[count:])))}


def stage_inputs(rig: Rig, batch: int) -> tuple[Any, list[str], list[torch.Tensor], dict[str, Any]]:
    """A batch as a `Stage` takes it: (features layout, context tensor names, flat inputs, constants)."""
    from edh.export.flatten import flatten

    inputs = rig.inputs(batch)
    context = rig.context(inputs)
    _, tensors, layout = flatten(rig.features(inputs, context))
    names = [k for k, v in context.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in context.items() if k not in names}
    return layout, names, [*tensors, *(context[k] for k in names)], constants


def export_and_check(rig: Rig, path: Any) -> list[Any]:
    """Export the component (eval mode) with `edh.export.onnx.export_graph`, check it against eager
    PyTorch with ``check_graph`` on another batch (of another size when the case's export is ``dynamic``)."""
    import onnx

    from edh.export.onnx import check_graph, export_graph

    rig.component.eval()
    layout, names, example, constants = stage_inputs(rig, BATCH)
    dynamic = rig.case.export == "dynamic"
    probe = stage_inputs(rig, PROBE_BATCH)[2] if dynamic else None
    check = probe if dynamic else stage_inputs(rig, BATCH)[2]
    input_names = [f"features{i}" for i in range(len(example) - len(names))] + names
    stage = Stage(rig, layout, names, constants, len(example)).eval()

    def export() -> None:
        stage.fill = example
        export_graph(stage, tuple(stage.pick(example)), path, stage.pick(input_names),
                     probe=tuple(stage.pick(probe)) if dynamic else None)

    export()
    used = {i.name for i in onnx.load(str(path)).graph.input}
    if len(used) < len(input_names):  # the graph dropped inputs the component does not read: take only the rest
        stage.keep = [i for i, name in enumerate(input_names) if name in used]
        export()
    stage.fill = check
    return check_graph(path, stage, tuple(stage.pick(check)))
