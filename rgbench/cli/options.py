"""Option parsing and user-error reporting shared by the command modules."""

from __future__ import annotations

from enum import Enum

import typer

#: the largest integer an option list accepts (sizes, K): far beyond any feasible run
MAX_INT = 2**31 - 1


def fail(message: str) -> None:
    """A user error: one line on stderr, exit code 1, no traceback."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def parse_ints(value: str, option: str) -> tuple[int, ...]:
    """'3,4,5' -> (3, 4, 5); ``typer.BadParameter`` naming ``option`` otherwise (an empty
    part such as '3,,4' too: it is a typo, not a request to skip a size)."""
    parts = value.split(",")
    if value.strip() and any(not part.strip() for part in parts):
        raise typer.BadParameter(f"empty value in {value!r}; expected comma-separated integers such as 3,4,5",
                                 param_hint=option)
    try:
        parsed = tuple(int(part) for part in parts if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 3,4,5, got {value!r}", param_hint=option)
    if not parsed:
        raise typer.BadParameter("needs at least one integer", param_hint=option)
    too_large = [v for v in parsed if abs(v) > MAX_INT]
    if too_large:  # it would overflow the results' int64 columns long after the compute
        raise typer.BadParameter(f"{too_large[0]} is too large (at most {MAX_INT})", param_hint=option)
    return parsed


def parse_names(value: str) -> tuple[str, ...]:
    """'a, b,' -> ('a', 'b')."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def command_line(context: typer.Context, **overrides) -> str:
    """The command with every option resolved (defaults included), so it reproduces the run;
    ``overrides`` replace option values (e.g. ``resume=True`` for the command that continues)."""
    words = ["rgbench", *context.command_path.split()[1:]]
    for param in context.command.params:
        value = overrides.get(param.name, context.params.get(param.name))
        if value is None or param.name == "quiet":
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        flag = param.opts[0]
        if isinstance(value, bool):
            if value or param.secondary_opts:
                words.append(flag if value else param.secondary_opts[0])
        elif isinstance(value, (list, tuple)):
            words += [part for item in value for part in (flag, str(item))]
        else:
            words += [flag, str(value.value if isinstance(value, Enum) else value)]
    return " ".join(words)
