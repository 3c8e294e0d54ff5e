"""Lesion tag files: a JSON vocabulary of tag names and, per lesion, the indices of its tags.

Schema (``<section>`` is ``"lesions"`` for DeepLesion, keyed by the 0-based data row of ``DL_info.csv``, or
``"instances"`` for NIfTI instance labels, keyed by the label value)::

    {"tag_names": ["liver", "lung", "lymph node"],
     "<section>": {"0": [0, 2], "17": [1]},
     "uncertain": {"17": [2]}}

``tag_names`` are distinct non-empty strings (index = tag id). A key is a decimal integer written without
signs, spaces or leading zeros; a value is a list of tag ids (or one id, as nnDetection writes one class per
instance). Lesions the file does not list have no tags. The optional ``uncertain`` object, keyed as the
section, lists tags that are neither positive nor negative for a lesion (``Lesion.uncertain_tags``: left
out of the tag loss and metrics), such as MULAN's uncertain labels; a tag cannot be both. MULAN's released
tag files hold the same information (a term list and, per DL_info row, the relevant tag ids, and uncertain
ones where given) and map onto this schema directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from medmtl.errors import InputError
from medmtl.io.text import read_text

TAG_NAMES_KEY = "tag_names"  # the JSON key of the vocabulary
UNCERTAIN_KEY = "uncertain"  # the JSON key of the uncertain tags
# Largest tag file read: MULAN's 171-tag file for all 32,735 DeepLesion lesions is a few MB.
MAX_TAGS_JSON_BYTES = 64 << 20
MAX_TAGS = 4096


def _key(path: Path, section: str, key: str) -> int:
    if not (key.isascii() and key.isdigit()) or (len(key) > 1 and key[0] == "0") or len(key) > 18:
        raise InputError(path, f"`{section}` key {key[:40]!r} is not a non-negative integer")
    return int(key)


def _tag_ids(path: Path, where: str, value: object, count: int) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or any(type(tag) is not int for tag in items):
        raise InputError(path, f"{where} is {str(value)[:60]}; expected a list of tag ids (integers)")
    bad = [tag for tag in items if not 0 <= tag < count]
    if bad:
        raise InputError(
            path, f"{where} has tag id {bad[0]}; `{TAG_NAMES_KEY}` has {count} names (ids 0..{count - 1})"
        )
    return tuple(sorted(set(items)))


class TagFile(NamedTuple):
    """A tag file as read: the vocabulary, and per key the sorted distinct ids of its tags and of its
    uncertain tags."""

    names: tuple[str, ...]
    tags: dict[int, tuple[int, ...]]
    uncertain: dict[int, tuple[int, ...]]


def _table(path: Path, data: dict, section: str, count: int) -> dict[int, tuple[int, ...]]:
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise InputError(path, f"`{section}` is a JSON {type(table).__name__}; expected an object")
    return {
        _key(path, section, key): _tag_ids(path, f"`{section}[{key!r}]`", value, count)
        for key, value in table.items()
    }


def read_tags_json(path: str | os.PathLike, section: str) -> TagFile:
    """Read a tag file (``TagFile``).

    The caller checks that every key names a lesion that exists. Any problem raises ``InputError`` naming
    the file.
    """
    path = Path(path)
    text = read_text(path, MAX_TAGS_JSON_BYTES, "a tag file")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputError(path, f"is not valid JSON ({str(err).splitlines()[0][:120]})") from err
    if not isinstance(data, dict):
        raise InputError(path, f"holds a JSON {type(data).__name__}; expected an object")
    names = data.get(TAG_NAMES_KEY)
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InputError(path, f"`{TAG_NAMES_KEY}` must be a list of non-empty strings")
    if len(names) > MAX_TAGS:
        raise InputError(path, f"`{TAG_NAMES_KEY}` has {len(names)} names, above the limit of {MAX_TAGS}")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InputError(path, f"`{TAG_NAMES_KEY}` names {twice[:60]!r} twice")
    tags = _table(path, data, section, len(names))
    uncertain = _table(path, data, UNCERTAIN_KEY, len(names))
    for key, ids in uncertain.items():
        both = set(ids) & set(tags.get(key, ()))
        if both:
            raise InputError(
                path, f"lesion {key} has tag {min(both)} both in `{section}` and in `{UNCERTAIN_KEY}`"
            )
    return TagFile(tuple(names), tags, uncertain)
