"""Move the event tables of an old catalog from ``tables.duckdb`` into ``tables.sqlite``, once.

Catalogs written before the multi-process layout (:mod:`stemcal.catalog.embedded`)
kept tiled's table store in DuckDB, which one process at a time may open.
:func:`migrate_duckdb_tables` copies every table the catalog references there
into the SQLite table store (same table names, rows and ``dataset_id``),
repoints the catalog's asset to it and renames the old file to
``tables.duckdb.migrated`` (kept as a backup; delete it when satisfied).

Crash safety: the copy is one SQLite transaction that first removes any rows
of the migrated datasets (so a repeated copy cannot duplicate them); the
repointing is one transaction in ``catalog.db``; the rename comes last. A
migration cut off anywhere is simply done again at the next open. The
caller holds the catalog's init and write locks.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["legacy_tables", "migrate_duckdb_tables"]

_LEGACY = "tables.duckdb"


def legacy_tables(directory: Path) -> bool:
    """Whether ``directory`` still has a DuckDB table store to migrate."""
    return (directory / _LEGACY).is_file()


def _canonical(uri: str) -> str:
    from tiled.storage import parse_storage
    return parse_storage(uri).uri


def _legacy_sources(db: Path, duck_uri: str) -> tuple[int | None, dict[str, tuple[str, set[int]]]]:
    """(asset id, {table name: (arrow schema, dataset ids)}) of the tables in DuckDB."""
    with closing(sqlite3.connect(db, timeout=30)) as con:
        row = con.execute("SELECT id FROM assets WHERE data_uri = ?", (duck_uri,)).fetchone()
        if row is None:
            return None, {}
        tables: dict[str, tuple[str, set[int]]] = {}
        for params, structure in con.execute(
                "SELECT ds.parameters, s.structure FROM data_sources ds "
                "JOIN structures s ON s.id = ds.structure_id "
                "JOIN data_source_asset_association a ON a.data_source_id = ds.id "
                "WHERE a.asset_id = ?", (row[0],)):
            p = json.loads(params)
            schema = json.loads(structure)["arrow_schema"]
            tables.setdefault(p["table_name"], (schema, set()))[1].add(int(p["dataset_id"]))
        return row[0], tables


def _copy_tables(directory: Path, tables: dict[str, tuple[str, set[int]]]) -> None:
    import adbc_driver_sqlite.dbapi
    import duckdb
    import pyarrow
    from tiled.adapters.sql import arrow_schema_to_create_table
    from tiled.structures.table import TableStructure

    src = duckdb.connect(str(directory / _LEGACY), read_only=True)
    try:
        with closing(adbc_driver_sqlite.dbapi.connect(str(directory / "tables.sqlite"))) as dst:
            cur = dst.cursor()
            top = 0
            for name, (schema_text, ids) in tables.items():
                schema = TableStructure(arrow_schema=schema_text, npartitions=1,
                                        columns=[]).arrow_schema_decoded
                schema = schema.insert(0, pyarrow.field("_partition_id", pyarrow.int16()))
                schema = schema.insert(0, pyarrow.field("_dataset_id", pyarrow.int32()))
                cur.execute(arrow_schema_to_create_table(schema, name, "sqlite"))
                cur.execute("CREATE INDEX IF NOT EXISTS dataset_and_partition_index "
                            f'ON "{name}"(_dataset_id, _partition_id)')
                id_list = ",".join(str(int(i)) for i in sorted(ids))
                cur.execute(f'DELETE FROM "{name}" WHERE _dataset_id IN ({id_list})')
                rows = src.execute(f'SELECT * FROM "{name}" WHERE _dataset_id IN ({id_list})'
                                   ).fetch_arrow_table()
                if rows.num_rows:
                    rows = pyarrow.Table.from_arrays(
                        [c.cast(f.type) for c, f in zip(rows.columns, schema)], schema=schema)
                    cur.adbc_ingest(name, rows, mode="append")
                top = max(top, *ids)
            cur.execute("CREATE TABLE IF NOT EXISTS _dataset_id_counter (value INTEGER NOT NULL)")
            cur.execute("INSERT INTO _dataset_id_counter (value) "
                        "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM _dataset_id_counter)")
            cur.execute(f"UPDATE _dataset_id_counter SET value = max(value, {int(top)})")
            cur.close()
            dst.commit()
    finally:
        src.close()


def _repoint(db: Path, old_asset: int, new_uri: str) -> None:
    with closing(sqlite3.connect(db, timeout=30)) as con, con:
        row = con.execute("SELECT id FROM assets WHERE data_uri = ?", (new_uri,)).fetchone()
        if row is None:
            con.execute("UPDATE assets SET data_uri = ? WHERE id = ?", (new_uri, old_asset))
        else:  # the SQLite store is in use already: move the links, drop the old asset
            con.execute("UPDATE data_source_asset_association SET asset_id = ? "
                        "WHERE asset_id = ?", (row[0], old_asset))
            con.execute("DELETE FROM assets WHERE id = ?", (old_asset,))


def migrate_duckdb_tables(directory: Path, table_store_uri: str) -> int:
    """Move the tables of ``directory/tables.duckdb`` into ``tables.sqlite``.

    Parameters
    ----------
    directory : Path
        The catalog directory.
    table_store_uri : str
        The URI of ``directory/tables.sqlite`` as tiled's storage.

    Returns
    -------
    int
        The number of datasets (one per stream of a run) moved.
    """
    db = directory / "catalog.db"
    duck_uri = _canonical(f"duckdb:///{directory / _LEGACY}")
    asset, tables = _legacy_sources(db, duck_uri)
    if tables:
        _copy_tables(directory, tables)
    if asset is not None:
        _repoint(db, asset, _canonical(table_store_uri))
    (directory / _LEGACY).rename(directory / (_LEGACY + ".migrated"))
    n = sum(len(ids) for _, ids in tables.values())
    log.warning("catalog %s: moved %d event tables from %s into tables.sqlite (the old file is "
                "kept as %s.migrated)", directory, n, _LEGACY, _LEGACY)
    return n
