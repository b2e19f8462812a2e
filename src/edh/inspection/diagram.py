"""``edh diagram``: a picture of a model's composition — input, encoder levels, decoder, each head —
with arrows labelled by the tensor shapes that flow along them (from the same trace as ``describe``)."""

from __future__ import annotations

import io
from pathlib import Path

from edh.inspection.describe import Description, human
from edh.utils.io import atomic_write

_COLORS = {"input": "#eeeeee", "encoder": "#cfe2ff", "decoder": "#d1e7dd", "head": "#fff3cd"}


def draw(model, description: Description, path: str | Path, title: str = "") -> Path:
    """Draw ``model`` (already described at some input size) to ``path`` (.png or .svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    path = Path(path)
    if path.suffix not in (".png", ".svg"):
        raise ValueError(f"--out must end in .png or .svg, got {path.name}")
    rows = {r.role: r for r in description.rows}
    encoder = rows["Encoder"]
    heads = [r for r in description.rows if r.role.startswith("Head:")]
    levels = encoder.output
    height = max(len(levels) * 0.7 + 1.2, len(heads) * 1.5 + 0.5, 3.0)
    has_decoder = "Decoder" in rows
    columns = 4 if has_decoder else 3
    fig, axis = plt.subplots(figsize=(3.6 * columns, height + 0.8))
    axis.set_xlim(0, 3.6 * columns)
    axis.set_ylim(-0.2, height + 0.6)
    axis.axis("off")

    def box(x, y, w, h, kind, text, size=8):
        axis.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=_COLORS[kind], ec="#555555"))
        axis.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, family="monospace")

    def arrow(x0, y0, x1, y1, label=""):
        axis.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#333333", lw=1.2))
        if label:
            axis.text(x0 + 0.25 * (x1 - x0), y0 + 0.25 * (y1 - y0) + 0.1, label, ha="center", va="bottom",
                      fontsize=7, family="monospace", color="#1a1a1a",
                      bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))

    mid = height / 2
    box(0.2, mid - 0.5, 2.6, 1.0, "input", "input\n" + encoder.input[0], 8)
    enc_x, enc_w = 3.8, 2.8
    enc_h = len(levels) * 0.7 + 0.8
    enc_y = mid - enc_h / 2
    box(enc_x, enc_y, enc_w, enc_h, "encoder", "", 8)
    axis.text(enc_x + enc_w / 2, enc_y + enc_h - 0.3, f"Encoder: {encoder.component}\n{human(encoder.params)} params",
              ha="center", va="center", fontsize=8, weight="bold")
    level_y = {}
    for index, shape in enumerate(levels):
        y = enc_y + enc_h - 0.95 - index * 0.7
        box(enc_x + 0.15, y - 0.22, enc_w - 0.3, 0.44, "encoder", f"level {index}: {shape}", 7)
        level_y[index] = y
    arrow(2.85, mid, enc_x - 0.05, mid, "")
    sources = {"encoder": (enc_x + enc_w, mid)}
    for index, y in level_y.items():
        sources[f"encoder.{index}"] = (enc_x + enc_w, y)
    next_x = enc_x + enc_w + 1.0
    if has_decoder:
        decoder = rows["Decoder"]
        dec_w, dec_h = 2.6, 1.4
        box(next_x, mid - dec_h / 2, dec_w, dec_h, "decoder",
            f"Decoder: {decoder.component}\n{human(decoder.params)} params\nout {decoder.output[0]}", 8)
        arrow(enc_x + enc_w + 0.05, mid, next_x - 0.05, mid, f"{len(levels)} levels")
        sources["decoder"] = (next_x + dec_w, mid)
        for index, shape in enumerate(decoder.output):
            sources[f"decoder.{index}"] = (next_x + dec_w, mid)
        next_x += dec_w + 1.0
    for index, head in enumerate(heads):
        y = height - 0.9 - index * (height - 0.4) / max(len(heads), 1)
        y = min(y, height - 0.9)
        text = f"{head.role}: {head.component}\nout {', '.join(head.output[:1])}\n{human(head.params)} params"
        box(next_x, y - 0.55, 3.0, 1.1, "head", text, 8)
        source = head.source if head.source in sources else head.source.split(".")[0]
        if source == "encoder" and model.heads[head.role[5:]].reads_level == -1:
            source = f"encoder.{len(levels) - 1}"
        x0, y0 = sources.get(source, sources["encoder"])
        arrow(x0 + 0.05, y0, next_x - 0.05, y, head.input[0] if head.input else "")
    for name, task in model.tasks().items():
        if name not in model.heads:  # the decoder's objective (`Model.tasks`): the model has no head
            axis.text(next_x, mid, f"no head:\nthe decoder's output\nis the result\n(scored: {task.task})", fontsize=8,
                      va="center")
    axis.set_title(title or f"edh model, input {'x'.join(map(str, description.input_size))}", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:], bbox_inches="tight", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
