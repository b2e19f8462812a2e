"""The demo report: one self-contained HTML page (images embedded as data URIs) and a Markdown twin."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from edh.inspection.describe import human
from edh.utils.io import atomic_write_text


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _role_table_html(description) -> str:
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in
                            ("role", "component", "function", "input", "output", "params", "MACs")) + "</tr>"
    rows = []
    for r in description.rows:
        source = f"<br><small>from {html.escape(r.source)}</small>" if r.source else ""
        settings = "".join(f"<br><small>{html.escape(f'{k} {v}')}</small>" for k, v in r.settings.items())
        rows.append("<tr>" + "".join([
            f"<td>{html.escape(r.role)}</td>", f"<td>{html.escape(r.component)}{source}</td>",
            f"<td>{html.escape(r.function)}{settings}</td>", f"<td><code>{'<br>'.join(map(html.escape, r.input))}</code></td>",
            f"<td><code>{'<br>'.join(map(html.escape, r.output))}</code></td>",
            f"<td class=n>{human(r.params)}</td>", f"<td class=n>{human(r.macs)}</td>"]) + "</tr>")
    rows.append(f"<tr><td>total</td><td></td><td></td><td></td><td></td><td class=n>{human(description.total_params)}</td>"
                f"<td class=n>{human(description.total_macs)}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _metrics_text(metrics: dict[str, dict[str, float]]) -> list[str]:
    from edh.heads.base import headline

    return [f"{head}: " + ", ".join(f"{k} = {v:.4f}" for k, v in headline(values).items())
            for head, values in metrics.items()]


def per_class_table(values: dict[str, float]) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """A head's per-class scalars (``figure/<class>``: ``iou/cat``, ``precision/3``) as a table:
    ``(figures, classes, {(class, figure): value})``, figures and classes in the order they first appear."""
    figures, classes, cells = [], [], {}
    for key, value in values.items():
        if "/" not in key:
            continue
        figure, name = key.split("/", 1)
        figures += [figure] if figure not in figures else []
        classes += [name] if name not in classes else []
        cells[name, figure] = value
    return figures, classes, cells


def _per_class_html(head: str, values: dict[str, float]) -> str:
    figures, classes, cells = per_class_table(values)
    if not classes:
        return ""
    head_row = "<tr><th>class</th>" + "".join(f"<th>{html.escape(f)}</th>" for f in figures) + "</tr>"
    rows = ["<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td class=n>{cells[name, f]:.3f}</td>" if (name, f) in cells else "<td></td>" for f in figures) + "</tr>"
        for name in classes]
    return (f"<table class=per-class><caption>head '{html.escape(head)}': per class, test split</caption>"
            f"{head_row}{''.join(rows)}</table>")


def _per_class_markdown(head: str, values: dict[str, float]) -> list[str]:
    figures, classes, cells = per_class_table(values)
    if not classes:
        return []
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - a pipe would end the cell
    lines = [f"**Head '{head}': per class, test split**", "", "| class | " + " | ".join(map(cell, figures)) + " |",
             "|---|" + "---:|" * len(figures)]
    lines += ["| " + cell(name) + " | " + " | ".join(f"{cells[name, f]:.3f}" if (name, f) in cells else ""
                                                     for f in figures) + " |" for name in classes]
    return lines + [""]


def _figures_html(figures: list) -> str:
    return "".join("<figure><div class=pictures>" + "".join(
        f"<img src='{_data_uri(p)}' alt='{html.escape(figure.caption)}'>" for p in figure.paths)
        + f"</div><figcaption>{html.escape(figure.caption)}</figcaption></figure>" for figure in figures)


def _figure_markdown(figure, out_dir: Path) -> str:
    """The figure's images on one line; alone, an image's alt text is the caption (it follows in italics)."""
    count = len(figure.paths)
    alts = [figure.caption] if count == 1 else [f"picture {i} of {count}" for i in range(1, count + 1)]
    return " ".join(f"![{alt}]({os.path.relpath(p, out_dir)})" for alt, p in zip(alts, figure.paths))


DIAGRAM_CAPTION = "How the model is composed: input, encoder levels, decoder and heads, with the tensor shapes between them"

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right}img{max-width:100%;border:1px solid #ddd}
caption{text-align:left;font-weight:600;padding:4px 0;white-space:nowrap}figure{margin:1.5em 0}figcaption{font-style:italic;margin-top:4px}
.pictures{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
section{border-top:2px solid #ccc;margin-top:2em}code{font-size:12px}.metric{font-size:15px;font-weight:600}"""


# Marks the page once loaded with how many images failed to render (read by the browser test).
_CHECK = ("<script>window.addEventListener('load',()=>{document.body.dataset.brokenImages="
          "[...document.images].filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
          "document.body.dataset.images=document.images.length;});</script>")


def write_report(results: list, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the demo ``results`` (`DemoResult`) into ``out_dir``:
    per model its headline metrics, role table, per-class table of each head, and captioned pictures."""
    from edh.workflows.demo import Figure

    out_dir = Path(out_dir)
    sections, markdown = [], ["# edh demo report", ""]
    summary = ["<table><tr><th>model</th><th>train + test time</th><th>result</th></tr>"]
    for result in results:
        metrics = _metrics_text(result.metrics)
        summary.append(f"<tr><td>{html.escape(result.demo.title)}</td><td class=n>{result.seconds:.0f} s</td>"
                       f"<td>{'<br>'.join(map(html.escape, metrics))}</td></tr>")
        figures = [Figure(DIAGRAM_CAPTION, [result.diagram])] if result.diagram else []
        figures += result.pictures
        tables = "".join(_per_class_html(head, values) for head, values in result.metrics.items())
        lines = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in result.lines)
        sections.append(
            f"<section><h2>{html.escape(result.demo.title)}</h2>"
            f"<p class=metric>{'<br>'.join(map(html.escape, metrics))}</p>"
            f"<p>trained and tested in {result.seconds:.0f} s; run folder <code>{html.escape(str(result.run_dir))}</code>"
            f"{'; ' + html.escape(result.note) if result.note else ''}</p>"
            f"{_role_table_html(result.description) if result.description else ''}{tables}{_figures_html(figures)}"
            f"{'<ul>' + lines + '</ul>' if lines else ''}</section>")
        markdown += [f"## {result.demo.title}", "", *[f"- {m}" for m in metrics],
                     f"- trained and tested in {result.seconds:.0f} s (`{result.run_dir}`)"
                     + (f"; {result.note}" if result.note else ""), "", "```",
                     result.table.rstrip(), "```", ""]
        for head, values in result.metrics.items():
            markdown += _per_class_markdown(head, values)
        for figure in figures:
            markdown += [_figure_markdown(figure, out_dir), "", f"*{figure.caption}*", ""]
        markdown += [f"    {line}" for line in result.lines] + [""]
    summary.append("</table>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>edh demo report</title>"
            f"<style>{_STYLE}</style>{_CHECK}</head><body><h1>edh demo report</h1>"
            f"<p>Each model is Encoder &rarr; [Decoder] &rarr; Head(s), trained on built-in data with a short "
            f"schedule.</p>{''.join(summary)}{''.join(sections)}</body></html>")
    html_path = atomic_write_text(out_dir / "report.html", page)
    md_path = atomic_write_text(out_dir / "report.md", "\n".join(markdown))
    return html_path, md_path
