"""Option parsing and user-error reporting shared by the command modules."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

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


# Options several commands share, declared once so their flags and help agree.
Force = Annotated[bool, typer.Option(
    "--force", help="Replace the results in a non-empty --out (old files stay until new ones are written).")]
Threads = Annotated[int, typer.Option(
    min=1, help="torch CPU threads. Default 1: stable per-estimate timings on a busy machine "
                "(recorded in the metadata).")]
Figures = Annotated[bool, typer.Option(
    help="Draw the figures (PNG and PDF); --no-figures is faster, `rgbench report` draws them later.")]

#: every command writes under this folder unless --out says otherwise
DEFAULT_OUT_ROOT = Path("rgbench-results")


def parse_registered(value: str | None, registry, option: str, default=None, allowed=None) -> tuple[str, ...]:
    """Comma-separated registry names or ``all`` -> canonical names (aliases accepted).

    ``None`` gives ``default``; ``all`` gives ``allowed`` (default: every registered name);
    an unknown name, or one outside ``allowed``, is a ``typer.BadParameter`` naming
    ``option`` and listing the valid names. The one vocabulary of --dists and --estimators.
    """
    if value is None:
        return tuple(default) if default is not None else tuple(allowed if allowed is not None else registry.names())
    names = parse_names(value)
    if not names:
        raise typer.BadParameter("needs at least one name (or 'all')", param_hint=option)
    valid = list(allowed) if allowed is not None else registry.names()
    if names == ("all",):
        return tuple(valid)
    out = []
    for name in names:
        if name not in registry:
            raise typer.BadParameter(f"unknown name {name!r}; valid: {', '.join(registry.names(with_aliases=True))}, all",
                                     param_hint=option)
        canonical = registry.canonical(name)
        if canonical not in valid:
            raise typer.BadParameter(f"{canonical!r} does not apply here; valid: {', '.join(valid)}, all",
                                     param_hint=option)
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def device(value: str, option: str = "--device") -> str:
    """A torch device string checked by the one device check (``bench.grid.check_device``:
    cpu, cuda or cuda:N, and CUDA present); ``typer.BadParameter`` naming ``option``
    otherwise. For commands that check their options before building a grid."""
    from rgbench.bench.grid import check_device

    try:
        return check_device(value)
    except ValueError as error:
        raise typer.BadParameter(str(error).removeprefix("device: "), param_hint=option) from None


#: the width help is rendered at (terminals narrower than this get their own width)
HELP_WIDTH = 100


def help_width() -> int:
    """``HELP_WIDTH``, or the terminal's width when that is narrower (``TERMINAL_WIDTH`` /
    ``COLUMNS`` set by the user win): help reads the same in a pipe as in a terminal."""
    import os
    import shutil
    import sys

    for variable in ("TERMINAL_WIDTH", "COLUMNS"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    if sys.stdout.isatty():
        return min(HELP_WIDTH, shutil.get_terminal_size((HELP_WIDTH, 24)).columns)
    return HELP_WIDTH


#: ``context_settings`` of every command: click's plain help at the same width
CONTEXT_SETTINGS = {"max_content_width": HELP_WIDTH}
