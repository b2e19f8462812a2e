"""The article's summary table for a real model: one row per role with its shapes, size and cost.

Shapes come from one forward pass at the stated input size (batch 1) with hooks on each role;
MACs from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2), with no extra dependency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from edh.core.features import Sequence

FUNCTIONS = {
    "encoder": "compress the input, extract features",
    "decoder": "restore resolution / generate structure",
    "head": "map features to the task's output",
}


@dataclass
class RoleRow:
    """One role of the table; ``settings``: a head's prediction settings (`Head.prediction_settings`:
    detection's ``score_thresh``, ``nms_thresh``, ``max_detections``), shown under its function."""

    role: str
    component: str
    function: str
    source: str
    input: list[str]
    output: list[str]
    params: int
    macs: int
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Description:
    input_size: list[int]
    rows: list[RoleRow] = field(default_factory=list)

    @property
    def roles(self) -> list[RoleRow]:
        """The role rows, without the indented rows of a head's branches (already counted in their head)."""
        return [r for r in self.rows if not r.role.startswith(" ")]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.roles)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.roles)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "rows": [asdict(r) for r in self.rows],
                "total_params": self.total_params, "total_macs": self.total_macs}

    def table(self, title: str = "edh model"):
        """A rich Table (print it with ``rich.print`` or `render`)."""
        from rich.table import Table

        table = Table(title=f"{title} - input {'x'.join(map(str, self.input_size))}", show_lines=True)
        for column in ("role", "component", "function", "input", "output", "params", "MACs"):
            table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
        for r in self.rows:
            source = f"\n(from {r.source})" if r.source else ""
            settings = "".join(f"\n{key} {value}" for key, value in r.settings.items())
            table.add_row(r.role, r.component + source, r.function + settings, "\n".join(r.input),
                          "\n".join(r.output), human(r.params), human(r.macs))
        table.add_row("total", "", "", "", "", human(self.total_params), human(self.total_macs))
        return table

    def render(self, title: str = "edh model", width: int = 140) -> str:
        from rich.console import Console

        console = Console(width=width, record=True, file=open("/dev/null", "w"))
        console.print(self.table(title))
        return console.export_text()


def human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def shapes(value: Any) -> list[str]:
    """Readable shapes of a role's input or output."""
    if isinstance(value, torch.Tensor):
        return [str(tuple(value.shape))]
    if isinstance(value, Sequence):
        mask = "" if value.padding_mask is None else f" mask {tuple(value.padding_mask.shape)}"
        return [f"seq {tuple(value.features.shape)}{mask}"]
    if isinstance(value, dict):
        return [f"{k}: {', '.join(shapes(v))}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [line for item in value for line in shapes(item)]
    return [type(value).__name__]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_model(model, input_size: tuple[int, ...] | None = None, context: dict[str, Any] | None = None) -> Description:
    """Trace ``model`` once at ``input_size`` (batch 1) and return every role's row."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = model.encoder
    size = tuple(input_size or encoder.default_input_size)
    example = encoder.example_input(size, device=next(model.parameters()).device)
    seen: dict[str, tuple[Any, Any]] = {}
    hooks = []
    for name, module in model.roles().items():
        def hook(_module, args, kwargs, output, name=name):
            seen[name] = (args[0] if args else None, output)

        hooks.append(module.register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_RNN_FLOPS)
    try:
        with torch.no_grad(), counter:
            decoder_context = model.decoder.example_context(example) if model.decoder is not None else {}
            model(example, **(context or decoder_context))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()

    def macs(path: str) -> int:
        key = f"{type(model).__name__}.{path}"
        table = flops.get(key, {})
        return int(sum(table.values()) // 2)

    input_shape = [("" if example.is_floating_point() else "tokens ") + str(tuple(example.shape))]
    rows = []
    spec = model.spec
    for name, module in model.roles().items():
        args, output = seen.get(name, (None, None))
        if name == "encoder":
            rows.append(RoleRow("Encoder", spec.encoder.name, FUNCTIONS["encoder"], "", input_shape,
                                shapes(output), _params(module), macs("encoder")))
        elif name == "decoder":
            rows.append(RoleRow("Decoder", spec.decoder.name, FUNCTIONS["decoder"], "encoder", shapes(args),
                                shapes(output), _params(module), macs("decoder")))
        else:
            head = name.split(".", 1)[1]
            head_spec = model.head_specs[head]
            function = module.function
            reads = module.reads_level
            if reads is not None and isinstance(args, (list, tuple)):
                args = [args[reads]]
            settings = module.prediction_settings() if hasattr(module, "prediction_settings") else {}
            rows.append(RoleRow(f"Head:{head}", head_spec.type, function, head_spec.source, shapes(args),
                                shapes(output), _params(module), macs(f"heads.{head}"), dict(settings)))
            rows.extend(_branches(module, head, flops, type(model).__name__))
    return Description(list(size), rows)


def _lstm_layer_flops(input_shape, weight_ih_shape, weight_hh_shape, *args, **kwargs) -> int:
    """FLOPs of one fused LSTM layer (oneDNN's ``mkldnn_rnn_layer``, which the FLOP counter does not
    know): the input and recurrent matmuls of every position, ``2 * positions * 4H * (I + H)``."""
    positions = 1
    for size in input_shape[:-1]:
        positions *= size
    return 2 * positions * (weight_ih_shape[0] * weight_ih_shape[1] + weight_hh_shape[0] * weight_hh_shape[1])


_RNN_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops}  # the GRU on the CPU runs as counted matmuls


def _branches(head: nn.Module, head_name: str, flops: dict, root: str) -> list[RoleRow]:
    """Rows for the named branches a head declares in ``branches`` (e.g. RoI cls / box)."""
    rows = []
    for branch, function in head.branches.items():
        module = head.get_submodule(branch)
        table = flops.get(f"{root}.heads.{head_name}.{branch}", {})
        rows.append(RoleRow(f"  {head_name}.{branch}", type(module).__name__, function, "", [], [],
                            _params(module), int(sum(table.values()) // 2)))
    return rows
