"""CRC-64/XZ: the fast implementation against crcmod, streaming, and combine."""

from __future__ import annotations

import crcmod
from hypothesis import given
from hypothesis import strategies as st

from ossmount.oss.crc64 import Crc64, crc64, crc64_combine

reference = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


def test_check_value_of_the_catalogue() -> None:
    # The RevEng catalogue's check value for CRC-64/XZ over "123456789".
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA


def test_empty_is_zero_as_oss_sends_it() -> None:
    assert crc64(b"") == 0
    assert crc64_combine(0, 0, 0) == 0


@given(st.binary(max_size=4096), st.binary(max_size=4096))
def test_matches_crcmod_streams_and_combines(first: bytes, second: bytes) -> None:
    whole = first + second
    assert crc64(whole) == reference(whole)
    assert crc64(second, crc64(first)) == reference(whole)
    assert crc64_combine(crc64(first), crc64(second), len(second)) == reference(whole)
    running = Crc64()
    running.update(first)
    running.update(memoryview(second))
    assert (running.value, running.length) == (reference(whole), len(whole))


def test_combine_over_large_lengths() -> None:
    # A 5 GiB run of zeros cannot be hashed here, but combine must agree with hashing for a
    # length whose bits exercise both branches of the squaring loop.
    piece = bytes(range(256)) * 4099
    assert crc64_combine(crc64(b"head"), crc64(piece), len(piece)) == reference(b"head" + piece)
