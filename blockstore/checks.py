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
    "check_new_block_size",
    "check_holder",
    "check_name",
    "check_num_blocks",
    "check_ttl",
    "is_int",
    "looks_like_lease_id",
]

MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 64 * 1024 * 1024
#: Unicode categories refused in names: controls (``\n``, ESC, DEL, C1 ...) and the line
#: and paragraph separators - anything that could forge a line of ``blockpoint inspect``.
_BAD_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


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
    (``new``) must also not look like a lease id (:func:`looks_like_lease_id`); a lease
    already stored under such a name (made before this rule) is still found and acquired
    by its exact name.
    """
    if not isinstance(name, str) or not name:
        raise LeaseNameError(f"lease name must be a non-empty string, got {name!r}")
    bad = _not_utf8(name) or _bad_character(name)
    if bad is not None:
        raise LeaseNameError(f"lease name {name!r} contains a {bad}; names are printed and "
                             "recorded, so they may not hold control characters or lone "
                             "surrogates", name=name)
    if new and looks_like_lease_id(name):
        raise LeaseNameError(f"lease name {name!r} looks like a lease id (32 hex digits): "
                             "lookups by name or id could not tell them apart; add a prefix "
                             "or a character that is not a hex digit", name=name)
    return name


def check_holder(holder: object) -> str | None:
    """``holder`` if it is ``None`` or a string a name could be; ``LeaseNameError`` otherwise."""
    if holder is None:
        return None
    if not isinstance(holder, str):
        raise LeaseNameError(f"holder must be a string or None, got {holder!r}")
    bad = _not_utf8(holder) or _bad_character(holder)
    if bad is not None:
        raise LeaseNameError(f"holder {holder!r} contains a {bad}")
    return holder
