"""Byte-level tokenizer: every string has exactly one token sequence.

Token ``i < 256`` is the byte ``i``; then ``BOS``, ``EOS`` and ``PAD``. Strings map to
bytes with UTF-8 and ``surrogateescape``, so *any* byte sequence a model samples —
valid UTF-8 or not — decodes to a string that encodes back to the same bytes. That
bijection is what makes string probabilities exact.
"""

from __future__ import annotations

import operator

__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """256 byte tokens plus ``BOS``, ``EOS`` and ``PAD``.

    >>> tok = ByteTokenizer()
    >>> tok.encode("é!")
    [195, 169, 33]
    >>> tok.decode(tok.encode("é!"))
    'é!'
    >>> tok.decode([0xff, 0x41])  # invalid UTF-8 survives the round trip
    '\\udcffA'
    >>> tok.encode(tok.decode([0xff, 0x41]))
    [255, 65]
    """

    bos_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    def encode(self, text: str, *, strict: bool = True) -> list[int]:
        """The byte tokens of ``text`` (no BOS/EOS).

        Raises ``TypeError`` for a non-``str`` and ``ValueError`` for a string that no
        byte sequence decodes to (lone surrogates outside ``surrogateescape``'s range,
        or escaped bytes that would decode to other characters). With ``strict=False``
        escaped bytes are taken as they are: a prompt joined from sampled pieces that
        split a UTF-8 character (``decode([0xe2, 0x82]) + decode([0xac])``) is the bytes
        that were sampled.

        >>> tok = ByteTokenizer()
        >>> tok.encode(tok.decode([0xe2, 0x82]) + tok.decode([0xac]), strict=False)
        [226, 130, 172]
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode: expected a str, got {type(text).__name__}")
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"ByteTokenizer.encode: {text!r} is not the decoding of any byte sequence ({err})"
            ) from None
        if strict and not text.isascii() and data.decode("utf-8", "surrogateescape") != text:
            raise ValueError(f"ByteTokenizer.encode: {text!r} is not the decoding of any byte sequence")
        return list(data)

    def decode(self, ids) -> str:
        """The string of byte tokens ``ids``; a special or out-of-range id is a ``ValueError``,
        a non-integer id (``1.5``) a ``TypeError``.

        >>> ByteTokenizer().decode([104, 105])
        'hi'
        """
        try:
            ids = [operator.index(i) for i in ids]  # not int(): 1.5 would silently become 1
        except TypeError as err:
            raise TypeError(f"ByteTokenizer.decode: expected integer ids, got {err}") from None
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: expected byte ids in [0, 256), got {bad[:5]}")
        return bytes(ids).decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"
