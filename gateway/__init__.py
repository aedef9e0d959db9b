"""cag: outbound call admission gateway."""

from gateway import native as _native

_native.install()  # before any compiled module loads: a stale mypyc build never runs
