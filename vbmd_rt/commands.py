"""Commands beyond ``info``. Each stays thin: parse, call one library function, print."""

from __future__ import annotations
