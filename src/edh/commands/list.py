from __future__ import annotations

NAME = "list"
HELP = "list registered encoders, decoders, heads and datasets, their options and what fits what"


def add_arguments(parser) -> None:
    parser.add_argument("what", nargs="?", choices=["encoders", "decoders", "heads", "datasets"])
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    import json

    from edh.inspection.catalog import list_components

    catalog = list_components(args.what[:-1] if args.what else None)
    if args.json:
        print(json.dumps(catalog, indent=2))
        return 0
    if args.what:
        print(format_role(args.what, catalog[args.what]))
        return 0
    from rich.table import Table

    from edh.commands import console as make_console

    console = make_console()
    for role, rows in catalog.items():
        table = Table(title=role, show_lines=False)
        extra = [c for c in ("produces", "accepts", "requires", "fits") if rows and c in rows[0]]
        for column in ["name", "summary", *extra, "options"]:
            table.add_column(column, overflow="fold")
        for row in rows:
            cells = [row["name"], row["summary"]]
            cells += [", ".join(row[c]) if isinstance(row[c], list) else str(row[c]) for c in extra]
            cells.append(", ".join(row["options"]))
            table.add_row(*cells)
        console.print(table)
    return 0


def format_role(role: str, rows: list[dict], width: int | None = None) -> str:
    """Plain text for ``edh list ROLE``: each component's name and summary, what it produces, accepts
    and fits, then one line per option: ``name (type = default): meaning``, wrapped to ``width``
    (the terminal's)."""
    import shutil
    import textwrap

    width = width or max(60, min(120, shutil.get_terminal_size((100, 24)).columns))
    out = [role]
    for row in rows:
        out.append("")
        out += textwrap.wrap(f"{row['name']}: {row['summary']}", width, initial_indent="  ", subsequent_indent="    ")
        for column in ("produces", "accepts", "requires", "fits"):
            value = row.get(column)
            if value:
                text = ", ".join(value) if isinstance(value, list) else str(value)
                out += textwrap.wrap(f"{column}: {text}", width, initial_indent="    ", subsequent_indent="      ")
        if row["options"]:
            out.append("    options:")
        for name, kind in row["options"].items():
            meaning = row.get("option_help", {}).get(name, "")
            line = f"{name} ({kind})" if kind else name
            out += textwrap.wrap(f"{line}: {meaning}" if meaning else line, width, initial_indent="      ",
                                 subsequent_indent="          ", break_on_hyphens=False)
    return "\n".join(out)
