"""Number formatting for tables: three significant digits, plain text and LaTeX.

A statistic with a 95% interval [lo, hi] is shown as ``value ± h`` with h = (hi - lo) / 2,
the interval's half-width (two significant digits), or as ``value [lo, hi]`` when the
interval is far from centred on the value (a norm's, which starts at 0). Non-finite values print as ``inf`` /
``-`` (LaTeX ``\\infty`` / ``--``).
"""

from __future__ import annotations

import math


def number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits; ``inf`` / ``-`` when not finite."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def latex_number(value: float, digits: int = 3) -> str:
    """``number`` in LaTeX math: ``1.2 \\times 10^{-5}`` for exponents."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\\text{--}"
    if math.isinf(value):
        return "\\infty" if value > 0 else "-\\infty"
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa} \\times 10^{{{int(exponent)}}}"
    return text


def half_width(lo: float, hi: float) -> float:
    if any(v is None or math.isnan(v) for v in (lo, hi)):
        return float("nan")
    if math.isinf(lo) or math.isinf(hi):
        return 0.0 if lo == hi else float("inf")
    return (hi - lo) / 2


def with_interval(value: float, lo: float, hi: float) -> str:
    half = half_width(lo, hi)
    if math.isnan(half):
        return number(value)
    return f"{number(value)} ± {number(half, 2)}"


def latex_with_interval(value: float, lo: float, hi: float) -> str:
    half = half_width(lo, hi)
    if math.isnan(half):
        return latex_number(value)
    return f"{latex_number(value)} \\pm {latex_number(half, 2)}"


def bracketed(value: float, lo: float, hi: float) -> str:
    """``value [lo, hi]``, for intervals not centred on the value (the bias norm's)."""
    if any(v is None or math.isnan(v) for v in (lo, hi)):
        return number(value)
    return f"{number(value)} [{number(lo, 2)}, {number(hi, 2)}]"


def latex_bracketed(value: float, lo: float, hi: float) -> str:
    if any(v is None or math.isnan(v) for v in (lo, hi)):
        return latex_number(value)
    return f"{latex_number(value)}\\ [{latex_number(lo, 2)}, {latex_number(hi, 2)}]"


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX paragraph."""
    replacements = {
        "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
        "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
        "‖": "$\\|$", "−": "$-$", "±": "$\\pm$", "×": "$\\times$", "†": "$^\\dagger$", "≤": "$\\le$",
    }
    return "".join(replacements.get(char, char) for char in text)


def unstable(value: float, lo: float, hi: float) -> bool:
    """True when the interval is wider than the value's magnitude (the number is mostly noise)."""
    if any(v is None or math.isnan(v) for v in (value, lo, hi)) or math.isinf(value):
        return False
    return (hi - lo) > abs(value)
