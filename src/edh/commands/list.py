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
