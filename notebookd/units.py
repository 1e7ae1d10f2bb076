"""Human units in the config: durations (``30s``, ``1m30s``) and sizes (``10MiB``)."""

import math

# The patterns are compiled (and re imported) by the parsers only: `notebookd status` formats with this
# module and never parses, and re is ~4 ms of its start (python -X importtime).
_DURATION_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
_DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_SIZE = r"(?i)(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?"
_SIZE_FACTORS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from ``30s``, ``1m30s``, ``500ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a duration (e.g. 30s, 1m30s, 500ms)")
    if isinstance(value, (int, float)):
        total = _finite(value)
    else:
        text = str(value).strip().replace(" ", "")
        pos, total = 0, 0.0
        import re

        for match in re.finditer(_DURATION_PART, text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError(f"{_show(value)} is not a duration (e.g. 30s, 1m30s, 500ms)")
    if math.isnan(total):
        raise ValueError(f"{_show(value)} is not a duration")
    if total < 0:
        raise ValueError(f"{_show(value)} is negative")
    if total > _LONGEST:
        raise ValueError(f"{_show(value)} is too long (at most 365d)")
    return float(total)


_LONGEST = 365 * 86400.0


def _finite(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_size(value: object) -> int:
    """Bytes from ``10MiB``, ``500kB``, ``1GB`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a size (e.g. 10MiB, 500kB)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{_show(value)} is negative")
        if value > 2**60:
            raise ValueError(f"{_show(value)} is too large")
        return value
    import re

    match = re.fullmatch(_SIZE, str(value).strip())
    if not match:
        raise ValueError(f"{_show(value)} is not a size (e.g. 10MiB, 500kB)")
    unit = (match.group(2) or "B").lower()
    size = float(match.group(1)) * _SIZE_FACTORS[unit]
    if not math.isfinite(size) or size > 2**60:
        raise ValueError(f"{_show(value)} is too large")
    return int(size)


def _show(value: object) -> str:
    """A value for an error message, cut short: errors stay one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_duration(seconds: float) -> str:
    """Short, for status tables: 42s, 5m12s, 3h05m, 2d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")
