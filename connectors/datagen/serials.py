"""Unique, random-looking serial numbers from counters, in constant memory.

A counter per bucket (for personal IDs: province, century/sex digit and year) goes through an affine bijection
modulo 10^digits, so serials never repeat within a bucket and no set of issued numbers is kept, even at 10 M people.
"""

from __future__ import annotations

import zlib


class ScrambledCounters:
    """`next(bucket)` gives the bucket's next serial: distinct for the first 10^digits calls, then ValueError."""

    def __init__(self, digits: int, seed: int) -> None:
        self.modulus = 10**digits
        # A multiplier coprime with 10^digits (odd, not a multiple of 5) makes n -> (a*n + b) mod m a bijection.
        multiplier = (seed * 7919 + 104_729) % self.modulus
        while multiplier % 2 == 0 or multiplier % 5 == 0:
            multiplier += 1
        self.multiplier = multiplier
        self.offset = (seed * 15_485_863 + 32_452_843) % self.modulus
        self.counts: dict[str, int] = {}
        self.offsets: dict[str, int] = {}

    def next(self, bucket: str = "") -> int:
        count = self.counts.get(bucket, 0)
        if count == 0:
            # each bucket starts elsewhere so first serials differ between buckets (crc32: stable across processes)
            self.offsets[bucket] = (self.offset + zlib.crc32(bucket.encode()) * 2_654_435_761) % self.modulus
        elif count >= self.modulus:
            raise ValueError(f"serial space of {self.modulus} exhausted for one bucket")
        self.counts[bucket] = count + 1
        return (self.multiplier * count + self.offsets[bucket]) % self.modulus
