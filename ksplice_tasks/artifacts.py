# SPDX-License-Identifier: GPL-2.0-only
"""The records handed from task to task: plain, typed data with one JSON form each.

Lower rooms produce them (the object passes) and higher ones consume them
(the table encoder, the collect stage), so they live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RelocRecord:
    """A relocation taken out of an object, to be resolved at load time.

    ``symbol`` is the name the running kernel knows the target by (for an
    anonymous target, the name of the section it lies in); the field is
    ``size`` bytes at ``offset`` in output section ``section``, inside
    function ``function`` when it is code.  The value to store is
    ``S + addend`` (minus the field's address when ``pcrel``).
    """

    symbol: str
    section: str
    offset: int
    pcrel: bool
    addend: int
    size: int
    type: int
    signed: bool
    function: str = ""


@dataclass(frozen=True)
class SizeRecord:
    """A function's name, size and section, for the sizes table."""

    name: str
    size: int
    section: str
