"""Folding of Vietnamese text for search: case and diacritics removed, đ/Đ mapped to d, spaces collapsed."""

from __future__ import annotations

import unicodedata

# đ/Đ are letters of their own, not d with a combining mark, so NFD leaves them; map them first.
_D = str.maketrans({"đ": "d", "Đ": "d"})


def fold(text: str) -> str:
    """`Nguyễn Thị Đào` -> `nguyen thi dao`: the key names are stored and searched under."""
    decomposed = unicodedata.normalize("NFD", text.translate(_D))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())
