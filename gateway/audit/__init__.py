"""The audit trail (SPEC §7, issue 4): sink in the worker, stream, archiver, export.

- ``record``   entries (decision / outcome) as dicts, their sort key and the export join
- ``sink``     ``AuditSink``: the worker's non-blocking writer (batches, stream, spool)
- ``spool``    the worker's local append-only file while Redis cannot take entries
- ``segments`` hourly partitions of sorted, gzip'd JSON-lines segment files
- ``archiver`` ``cag audit archive``: stream → segments (consumer group), retention, compaction
- ``export``   ``cag audit export``: segments + stream, merged and joined in time order
- ``cli``      the ``cag audit`` commands
"""

from gateway.audit.sink import AuditSink

__all__ = ["AuditSink"]
