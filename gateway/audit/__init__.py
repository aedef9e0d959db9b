"""The audit trail (SPEC §7, issue 4): sink in the worker, stream, archiver, export.

- ``record``   entries (decision / outcome) as dicts, their sort key, the join, stream chunks
- ``sink``     ``AuditSink``: the worker's non-blocking writer (batches, stream, spool)
- ``spool``    the worker's local append-only file while Redis cannot take entries
- ``segments`` hourly partitions and their files, compaction, retention, the legacy reader
- ``columnar`` the Parquet files: schemas, Arrow conversions, durable writes
- ``engine``   DuckDB views over the files: the join, de-duplication, the ``audit`` view
- ``lines``    export's JSON lines / CSV built column-wise
- ``archiver`` ``cag audit archive``: stream → Parquet (consumer group), retention, compaction
- ``export``   ``export``, ``find``, ``Query``: archive + stream, joined, in time order
- ``cli``      the ``cag audit`` commands (archive, export, query, convert)
"""

from gateway.audit.sink import AuditSink

__all__ = ["AuditSink"]
