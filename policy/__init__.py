"""Policy: the admission rules and their store."""

from gateway import native as _native

_native.install()  # policy.rules & co. are in the mypyc build too (gateway/native.py)
