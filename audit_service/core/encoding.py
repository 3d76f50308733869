"""Standard base64 (RFC 4648 section 4), decoded strictly: one spelling per value.

Notes and checkpoints are signed and compared as text. A decoder that also took missing
padding, stray characters or non-zero spare bits would let one hash or signature appear
under several texts; this one takes only what `b64encode` writes.
"""

from __future__ import annotations

import base64
import binascii


def b64encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """The bytes whose `b64encode` is exactly `text`; ValueError for anything else."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not standard base64") from None
    if b64encode(data) != text:
        raise ValueError("not canonical standard base64")
    return data
