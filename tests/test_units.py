"""Human units in the config (durations, sizes) and the short forms `notebookd status` prints."""

from __future__ import annotations

import math

import pytest

from notebookd.units import format_duration, format_size, parse_duration, parse_size

# ---- durations ----


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0),
    ("1m30s", 90.0),
    ("500ms", 0.5),
    ("1m", 60.0),           # minutes, not months or milliseconds
    ("2h", 7200.0),
    ("1d", 86400.0),
    ("2h30m", 9000.0),
    ("1h1m1s", 3661.0),
    ("1.5s", 1.5),
    ("0.25h", 900.0),
    ("0s", 0.0),
    ("1m 30s", 90.0),       # spaces between parts are fine
    ("  45s  ", 45.0),      # and around the value
    ("1s500ms", 1.5),
])
def test_duration_text(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value, seconds", [(30, 30.0), (0, 0.0), (2.5, 2.5), (0.001, 0.001)])
def test_bare_numbers_are_seconds(value, seconds):
    result = parse_duration(value)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize("text", [
    "", "   ", "s", "ms", "30", "1m30", "30x", "30 seconds", "x30s", "30s x", "30S", "1e3s",
    "-5s", "--5s", "5s-", "1,5s", ".5s", "inf", "nan", "1m30s!",
])
def test_bad_duration_text_is_rejected_with_an_example(text):
    with pytest.raises(ValueError) as exc:
        parse_duration(text)
    message = str(exc.value)
    assert repr(text) in message
    assert "30s" in message  # shows the user what a duration looks like


@pytest.mark.parametrize("value", [-1, -0.5])
def test_negative_duration_is_rejected(value):
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_boolean_is_not_a_duration(value):
    # YAML turns `yes`/`no`/`true` into booleans; they must not become 1s / 0s
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [None, [], {}])
def test_non_scalar_is_not_a_duration(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, float("-nan")])
def test_nan_is_not_a_duration(value):
    # YAML `.nan`: NaN != NaN would make every reload look like a change
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.inf, 10**400, "1" * 400 + "s", "366d", 365 * 86400 + 1])
def test_absurdly_long_duration_is_rejected(value):
    with pytest.raises(ValueError, match="too long") as exc:
        parse_duration(value)
    assert len(str(exc.value)) < 100  # a 400-digit value is cut short in the message


def test_a_year_is_the_longest_duration():
    assert parse_duration("365d") == 365 * 86400.0


# ---- sizes ----


@pytest.mark.parametrize("text, size", [
    ("10MiB", 10 * 2**20),
    ("500kB", 500_000),
    ("1GB", 10**9),
    ("1KiB", 1024),
    ("4KiB", 4096),
    ("2GiB", 2 * 2**30),
    ("1TB", 10**12),
    ("1TiB", 2**40),
    ("1.5KiB", 1536),
    ("10 MiB", 10 * 2**20),
    ("10mib", 10 * 2**20),   # units are case-insensitive
    ("100B", 100),
    ("4096", 4096),          # a bare number of bytes, quoted or not
    (" 8KiB ", 8192),
])
def test_size_text(text, size):
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


def test_decimal_and_binary_prefixes_differ():
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1MiB") == 1_048_576


@pytest.mark.parametrize("value", [0, 1, 4096, 10 * 2**20])
def test_bare_int_is_bytes(value):
    assert parse_size(value) == value


@pytest.mark.parametrize("text", ["", "MiB", "ten", "10XB", "10 MiB extra", "1e6", "-1", "-1KiB", "10K", "10M",
                                  "KiB10", "1,5MiB", "10MiBs"])
def test_bad_size_text_is_rejected_with_an_example(text):
    with pytest.raises(ValueError) as exc:
        parse_size(text)
    assert repr(text) in str(exc.value)
    assert "10MiB" in str(exc.value)


def test_negative_size_is_rejected():
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@pytest.mark.parametrize("value", [True, False, None, [1]])
def test_non_sizes_are_rejected(value):
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("value", ["1" * 400 + "B", "1" * 400, 2**61, 10**400, "2000000TiB"])
def test_absurdly_large_size_is_rejected(value):
    with pytest.raises(ValueError, match="too large") as exc:
        parse_size(value)
    assert len(str(exc.value)) < 100


# ---- the short forms in the status table ----


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (42, "42s"), (59.9, "59s"), (60, "1m00s"), (312, "5m12s"), (3599, "59m59s"),
    (3600, "1h00m"), (3 * 3600 + 5 * 60 + 59, "3h05m"), (86399, "23h59m"),
    (86400, "1d00h"), (2 * 86400 + 4 * 3600 + 59, "2d04h"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("size, text", [
    (0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1.0KiB"), (1536, "1.5KiB"),
    (10 * 2**20, "10.0MiB"), (3 * 2**30, "3.0GiB"), (5 * 2**40, "5120.0GiB"),
])
def test_format_size(size, text):
    assert format_size(size) == text


@pytest.mark.parametrize("text", ["30s", "1m30s", "2h05m", "1d", "90s", "0s"])
def test_format_duration_reads_back(text):
    # what status prints can be pasted back into the config (exact here: no sub-unit remainder)
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == seconds
