"""The stream's chunks: several entries, column-wise, in one stream entry."""

from __future__ import annotations

import msgpack
import pytest

from gateway.audit.record import chunk_columns, pack_chunk, unpack_chunk
from tests.unit.audit._builders import T0, dec, out


def test_chunk_round_trip_keeps_every_field_and_leaves_out_nones() -> None:
    es = [dec("a", T0), out("a", T0, T0 + 5, final_code=200), dec("b", T0 + 1, consent_token=None),
          out("c", None, T0 + 9, ended_at=T0 + 9)]
    assert unpack_chunk(pack_chunk(es)) == es
    n, cols = chunk_columns(pack_chunk(es))
    assert n == 4 and "dt" in cols and "evidence_ref" not in cols  # no entry had one


@pytest.mark.parametrize("bad", [
    {"x": 1}, {"n": 2, "k": ["d"], "rid": ["a", "b"], "t": [1, 2]}, {"n": 1, "k": ["z"], "rid": ["a"], "t": [1]},
    {"n": 1, "rid": ["a"], "t": [1]}, [1, 2],
])
def test_a_chunk_that_is_not_audit_data_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        chunk_columns(msgpack.packb(bad))


def test_the_engine_and_the_writer_agree_on_the_schema() -> None:
    """engine keeps its own copy (export starts without pyarrow): it must not drift."""
    import pyarrow as pa

    from gateway.audit import columnar, engine

    assert engine.RECORD_FIELDS == columnar.RECORD_FIELDS
    assert engine.DECISION_FIELDS == columnar.DECISION_FIELDS
    sql = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER"}
    assert {f.name: sql[f.type] for f in columnar.ENTRY_SCHEMA} == engine.SQL_TYPES
