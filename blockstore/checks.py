"""Argument checks shared by the store (``base.py``) and its handles (``lease.py``).

They live in their own module so that neither of those imports the other for them: the
store builds handles, the handles call the store only through the small protocol in
``lease.py``, and both validate arguments here, before anything is changed.
"""

from __future__ import annotations

import math
import numbers
import unicodedata

from .errors import BlockIndexError, LeaseNameError, StoreConfigError

__all__ = [
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "SECTOR_SIZE",
    "check_block_size",
    "check_holder",
    "check_id",
    "check_name",
    "check_new_block_size",
    "check_num_blocks",
    "check_ttl",
    "is_int",
    "looks_like_lease_id",
    "new_names_only",
]

MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 64 * 1024 * 1024
#: Unicode categories refused in names: controls (``\n``, ESC, DEL, C1 ...) and the line
#: and paragraph separators - anything that could forge a line of ``blockpoint inspect``.
_BAD_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
#: Unicode category refused in new names, holders, stage ids and run ids: format characters
#: (``Cf``) - the bidirectional overrides, embeddings and isolates (U+202A-202E,
#: U+2066-2069) that reorder the text around them on screen, and the invisible ones (zero
#: width space U+200B, joiners U+200C/200D, word joiner U+2060, BOM U+FEFF, soft hyphen
#: U+00AD). Names are shown raw where nothing escapes them (log lines, metric tags, Grafana
#: legends), so ``agg\u202egnp.`` would read as another stage's name. The joiners are
#: refused too although some scripts and emoji use them: one rule for the whole category.
_FORMAT_CATEGORY = "Cf"


def is_int(x: object) -> bool:
    """An integer (numpy integers included), but not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_ttl(ttl: object) -> float:
    """``ttl`` as a float; ``ValueError`` unless it is a finite number of seconds > 0."""
    if (not isinstance(ttl, numbers.Real) or isinstance(ttl, bool)
            or not math.isfinite(ttl) or ttl <= 0):
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)


def check_num_blocks(num_blocks: object, what: str) -> int:
    """``num_blocks`` as an int; ``BlockIndexError`` unless it is an int >= 0."""
    if not is_int(num_blocks) or num_blocks < 0:  # type: ignore[operator]
        raise BlockIndexError(f"cannot {what} with {num_blocks!r} blocks",
                              index=int(num_blocks) if is_int(num_blocks) else None)
    return int(num_blocks)  # type: ignore[call-overload]


def check_block_size(block_size: object) -> int:
    """``block_size`` if valid; ``StoreConfigError`` otherwise."""
    if not is_int(block_size) or not (
            MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):  # type: ignore[operator]
        raise StoreConfigError(
            f"block size must be an int in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}], "
            f"got {block_size!r}")
    return int(block_size)  # type: ignore[call-overload]


#: A new store's block size is a multiple of this (the disk sector): see
#: :func:`check_new_block_size`.
SECTOR_SIZE = 512


def check_new_block_size(block_size: object) -> int:
    """``block_size`` if a new store may be created with it; ``StoreConfigError`` otherwise.

    Besides :func:`check_block_size`'s range, a multiple of 512: a checkpoint reader tells a
    header write torn by power loss (never committed) from damage by its zeroed 512-byte
    sectors, counted from the start of the block (``docs/FORMAT.md`` 2.1, the sector rule).
    With any other size, block i starts off a sector boundary, a lost sector zeroes parts of
    two windows and neither whole, and an interrupted commit reads as corruption
    (``blockpoint verify`` fails). Stores made with such a size before this rule still open.
    """
    bs = check_block_size(block_size)
    if bs % SECTOR_SIZE:
        raise StoreConfigError(
            f"block size must be a multiple of {SECTOR_SIZE} (the disk sector) for a new "
            f"store, got {bs}: with any other size a header write torn by power loss reads as "
            f"corruption (e.g. {bs // SECTOR_SIZE * SECTOR_SIZE or SECTOR_SIZE} or "
            f"{(bs // SECTOR_SIZE + 1) * SECTOR_SIZE})")
    return bs


def _bad_character(text: str) -> str | None:
    for pos, ch in enumerate(text):
        if ch == "\x00" or unicodedata.category(ch) in _BAD_CATEGORIES:
            return (f"control character U+{ord(ch):04X} "
                    f"({unicodedata.name(ch, 'unnamed')}) at position {pos}")
    return None


def _format_character(text: str) -> str | None:
    for pos, ch in enumerate(text):
        if unicodedata.category(ch) == _FORMAT_CATEGORY:
            return (f"format character U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')}) "
                    f"at position {pos} (invisible, or reorders the text around it)")
    return None


def _not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}, which "
                "cannot be encoded as UTF-8")
    return None


def looks_like_lease_id(text: str) -> bool:
    """True if ``text`` has the shape of a lease id: 32 hex digits (either case).

    Such a string cannot be a *new* lease's name (:func:`check_name`): lookups that take a
    name or an id (``BlockStore.lease_info``, ``open_reader``, ``delete_lease``, the CLI)
    could not tell which was meant (``docs/FORMAT.md``, lease names).
    """
    return len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text)


def check_name(name: object, *, new: bool = True) -> str:
    """``name`` if it can name a lease; ``LeaseNameError`` (a ``ValueError``) otherwise.

    A name is a non-empty string that can be encoded as UTF-8 (no lone surrogates: records
    and object keys are UTF-8), without NUL, control characters (Unicode category ``Cc``:
    newline, ESC, DEL, C1 controls) or line/paragraph separators. A name for a new lease
    (``new``) must also hold no format character (category ``Cf``: bidirectional overrides
    and isolates, zero-width characters; see ``_FORMAT_CATEGORY``) and not look like a lease
    id (:func:`looks_like_lease_id`); a lease already stored under such a name (made before
    these rules) is still found and acquired by its exact name (:func:`new_names_only`).
    """
    if not isinstance(name, str) or not name:
        raise LeaseNameError(f"lease name must be a non-empty string, got {name!r}")
    bad = _not_utf8(name) or _bad_character(name)
    if bad is not None:
        raise LeaseNameError(f"lease name {name!r} contains a {bad}; names are printed and "
                             "recorded, so they may not hold control characters or lone "
                             "surrogates", name=name)
    if not new:
        return name
    invisible = _format_character(name)
    if invisible is not None:
        raise LeaseNameError(f"lease name {name!r} contains a {invisible}; names are shown in "
                             "logs, metrics and dashboards, where it would hide or reorder "
                             "text", name=name)
    if looks_like_lease_id(name):
        raise LeaseNameError(f"lease name {name!r} looks like a lease id (32 hex digits): "
                             "lookups by name or id could not tell them apart; add a prefix "
                             "or a character that is not a hex digit", name=name)
    return name


def new_names_only(name: str) -> bool:
    """True if ``name`` passes :func:`check_name` only as an existing lease's name (it looks
    like a lease id or holds a format character): ``acquire`` then takes over a lease of
    that exact name but creates none."""
    return looks_like_lease_id(name) or _format_character(name) is not None


def check_id(value: object, what: str) -> str:
    """``value`` if it can be a stage id or run id (``what`` says which, for the message).

    The rules of a new lease's name except the id rule (a stage id or run id is the name,
    or part of the name, of a lease; ``docs/FORMAT.md`` 1.4): a non-empty UTF-8 string
    without NUL, control characters, line/paragraph separators or format characters.
    Refused with :class:`LeaseNameError` naming the code point and its position, before
    any lease is taken.
    """
    if not isinstance(value, str) or not value:
        raise LeaseNameError(f"{what} must be a non-empty string, got {value!r}")
    bad = _not_utf8(value) or _bad_character(value) or _format_character(value)
    if bad is not None:
        raise LeaseNameError(f"{what} {value!r} contains a {bad}; it names leases and "
                             "is shown in logs, metrics and dashboards", name=value)
    return value


def check_holder(holder: object) -> str | None:
    """``holder`` if it is ``None`` or a string a name could be; ``LeaseNameError`` otherwise."""
    if holder is None:
        return None
    if not isinstance(holder, str):
        raise LeaseNameError(f"holder must be a string or None, got {holder!r}")
    bad = _not_utf8(holder) or _bad_character(holder) or _format_character(holder)
    if bad is not None:
        raise LeaseNameError(f"holder {holder!r} contains a {bad}")
    return holder
