"""A string that hides itself in ``repr`` and logs but survives serialisation.

Plain ``SecretStr`` serialises to ``'**********'``, which would lose the key
material on its way through Temporal; this type masks in ``repr``/``str`` and
writes the real value only in JSON, which the payload codec encrypts.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import PlainSerializer, SecretStr

Secret = Annotated[
    SecretStr,
    PlainSerializer(lambda s: s.get_secret_value(), return_type=str, when_used="json"),
]
