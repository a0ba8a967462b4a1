"""The Databricks branch of ``medallion.tables``: its SQL and its merge semantics.

Delta Lake for Spark needs jars from Maven, so the statements the Databricks branch runs are
checked with Spark's own SQL parser (the plan Databricks would analyse), and the merge spec they
are built from is applied to a real Delta table with the ``deltalake`` package.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import SparkSession

from medallion import tables
from medallion.silver import HASH_COLUMN, KEY, KEYS

TABLE = tables.Table("main", "stack`exchange", "silver_posts")  # a backtick must stay quoted
SPEC = tables.Upsert(KEYS, HASH_COLUMN, "a.example")
SCHEMA = pa.schema(
    [("site", pa.string()), (KEY, pa.int64()), (HASH_COLUMN, pa.string()), ("Title", pa.string())]
)

# Site a: post 1 is not in the batch, 2 changed, 3 unchanged (same hash; its Title differs only
# to show whether the row was rewritten), 4 is new. Site b has posts 2 and 4 too: untouched.
OTHER_SITE = [("b.example", 2, "h2", "b two"), ("b.example", 4, "hb4", "b four")]
CURRENT = [
    ("a.example", 1, "h1", "one"),
    ("a.example", 2, "h2", "two"),
    ("a.example", 3, "h3", "three"),
    *OTHER_SITE,
]
BATCH = [
    ("a.example", 2, "h2-edited", "two, edited"),
    ("a.example", 3, "h3", "three, not rewritten"),
    ("a.example", 4, "h4", "four"),
]
EXPECTED = sorted([
    ("a.example", 1, "h1", "one"),
    ("a.example", 2, "h2-edited", "two, edited"),
    ("a.example", 3, "h3", "three"),
    ("a.example", 4, "h4", "four"),
    *OTHER_SITE,
])  # fmt: skip


@pytest.fixture(scope="module")
def parser(spark: SparkSession):
    """Spark's SQL parser: what the Databricks branch's text means, before any analysis."""
    return spark._jsparkSession.sessionState().sqlParser()


def _parts(identifier) -> list[str]:
    return list(identifier.mkString("\x00").split("\x00"))


def test_merge_statement_upserts_by_key_only_on_change(parser) -> None:
    plan = parser.parsePlan(tables.merge_sql(TABLE, "batch_1", SPEC))

    assert plan.getClass().getSimpleName() == "MergeIntoTable"
    target, source = plan.targetTable(), plan.sourceTable()
    assert (target.alias(), _parts(target.child().multipartIdentifier())) == (
        tables.TARGET,
        ["main", "stack`exchange", "silver_posts"],
    )
    assert (source.alias(), _parts(source.child().multipartIdentifier())) == (
        tables.SOURCE,
        ["batch_1"],
    )
    assert plan.mergeCondition().sql() == parser.parseExpression(SPEC.condition).sql()
    assert plan.mergeCondition().sql() == (
        "(((t.site = 'a.example') AND (t.site = s.site)) AND (t.PostId = s.PostId))"
    )

    (matched,) = [plan.matchedActions().apply(i) for i in range(plan.matchedActions().size())]
    assert matched.getClass().getSimpleName() == "UpdateStarAction"
    assert matched.condition().get().sql() == parser.parseExpression(SPEC.changed).sql()
    assert matched.condition().get().sql() == "(NOT (t._row_hash = s._row_hash))"
    (inserted,) = [
        plan.notMatchedActions().apply(i) for i in range(plan.notMatchedActions().size())
    ]
    assert inserted.getClass().getSimpleName() == "InsertStarAction"
    assert not inserted.condition().isDefined()
    assert plan.notMatchedBySourceActions().size() == 0  # rows the batch lacks are kept


def test_create_statement_makes_an_empty_clustered_table_only_if_missing(parser) -> None:
    plan = parser.parsePlan(tables.create_sql(TABLE, "batch_2"))

    assert plan.getClass().getSimpleName() == "CreateTableAsSelect"
    assert _parts(plan.name().nameParts()) == ["main", "stack`exchange", "silver_posts"]
    assert plan.tableSpec().provider().get().lower() == "delta"
    assert plan.ignoreIfExists()
    clustering = plan.partitioning().mkString()
    assert "cluster_by" in clustering and "site" in clustering
    query = plan.query()
    assert query.getClass().getSimpleName() == "Project"
    assert query.child().getClass().getSimpleName() == "Filter"
    assert query.child().condition().sql() == "false"  # created empty, filled by the replace


def test_replace_statement_replaces_only_the_sites_rows(parser) -> None:
    plan = parser.parsePlan(tables.replace_site_sql(TABLE, "batch_3", "o'brien.example"))

    assert plan.getClass().getSimpleName() == "OverwriteByExpression"
    assert _parts(plan.table().multipartIdentifier()) == ["main", "stack`exchange", "silver_posts"]
    assert plan.deleteExpr().sql() == "(site = 'o\\'brien.example')"
    assert _parts(plan.query().child().multipartIdentifier()) == ["batch_3"]


def test_schema_statement_creates_only_if_missing(parser) -> None:
    plan = parser.parsePlan(tables.create_schema_sql(TABLE))

    assert plan.getClass().getSimpleName() == "CreateNamespace"
    assert plan.ifNotExists()
    assert _parts(plan.name().multipartIdentifier()) == ["main", "stack`exchange"]


def _arrow(rows: list[tuple]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, row, strict=True)) for row in rows], SCHEMA)


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(row.values()) for row in table.to_pylist())


def _merge(path: Path, batch: list[tuple]) -> dict:
    """The Databricks statement's clauses on a Delta table: UPDATE SET * -> update_all, ..."""
    return (
        DeltaTable(path)
        .merge(
            _arrow(batch),
            predicate=SPEC.condition,
            source_alias=tables.SOURCE,
            target_alias=tables.TARGET,
        )
        .when_matched_update_all(predicate=SPEC.changed)
        .when_not_matched_insert_all()
        .execute()
    )


def test_merge_spec_on_a_delta_table_inserts_updates_and_reruns_as_a_no_op(
    tmp_path: Path,
) -> None:
    """Only site a's rows change; site b's posts with the same ids are not matched."""
    path = tmp_path / "silver_posts"
    write_deltalake(path, _arrow(CURRENT))

    first = _merge(path, BATCH)
    assert (first["num_target_rows_inserted"], first["num_target_rows_updated"]) == (1, 1)
    assert _rows(DeltaTable(path).to_pyarrow_table()) == EXPECTED

    again = _merge(path, BATCH)
    assert (again["num_target_rows_inserted"], again["num_target_rows_updated"]) == (0, 0)
    assert _rows(DeltaTable(path).to_pyarrow_table()) == EXPECTED


def test_replace_where_on_a_delta_table_keeps_the_other_sites(tmp_path: Path) -> None:
    """What INSERT ... REPLACE WHERE site = ... does, on a real Delta table."""
    path = tmp_path / "bronze"
    write_deltalake(path, _arrow(CURRENT))
    fresh = [("a.example", 9, "h9", "nine")]
    write_deltalake(path, _arrow(fresh), mode="overwrite", predicate="site = 'a.example'")
    assert _rows(DeltaTable(path).to_pyarrow_table()) == sorted([*fresh, *OTHER_SITE])


def test_local_branch_upserts_exactly_as_the_delta_merge(
    spark: SparkSession, request: pytest.FixtureRequest
) -> None:
    table = tables.Table("main", "t_upsert", request.node.name[:40])
    frame = f"site string, {KEY} long, {HASH_COLUMN} string, Title string"
    for site in ("a.example", "b.example"):
        rows = [row for row in CURRENT if row[0] == site]
        tables.replace_site(spark.createDataFrame(rows, frame), table, site)

    for _ in range(2):  # the second run is a no-op
        tables.upsert(spark.createDataFrame(BATCH, frame), table, keys=KEYS,
                      hash_column=HASH_COLUMN, site="a.example")  # fmt: skip
        assert sorted(tuple(r) for r in tables.read(spark, table).collect()) == EXPECTED


LEGACY_COLUMNS = ["PostId", "_site", "_row_hash", "Title"]  # the single-site version's silver


def test_evolution_statement_replaces_the_legacy_table_with_its_rows_renamed(parser) -> None:
    (statement,) = tables.evolution_sql(TABLE, LEGACY_COLUMNS, "batch_4")
    plan = parser.parsePlan(statement)

    assert plan.getClass().getSimpleName() == "ReplaceTableAsSelect"
    assert plan.orCreate()
    assert _parts(plan.name().nameParts()) == ["main", "stack`exchange", "silver_posts"]
    assert plan.tableSpec().provider().get().lower() == "delta"
    clustering = plan.partitioning().mkString()
    assert "cluster_by" in clustering and "site" in clustering
    query = plan.query()
    assert query.getClass().getSimpleName() == "Project"
    assert [query.projectList().apply(i).sql() for i in range(query.projectList().size())] == [
        "PostId", "_site AS site", "_row_hash", "Title",
    ]  # fmt: skip
    source = query.child()
    assert _parts(source.multipartIdentifier()) == ["main", "stack`exchange", "silver_posts"]


def test_evolution_statement_recreates_a_table_without_site_information_empty(parser) -> None:
    (statement,) = tables.evolution_sql(TABLE, ["Rank", "Tag", "Posts"], "batch_5")
    plan = parser.parsePlan(statement)

    assert plan.getClass().getSimpleName() == "ReplaceTableAsSelect"
    assert "cluster_by" in plan.partitioning().mkString()
    assert plan.query().child().condition().sql() == "false"
    assert _parts(plan.query().child().child().multipartIdentifier()) == ["batch_5"]


def _by_site(path: Path) -> list[tuple]:
    rows = DeltaTable(path).to_pyarrow_table().to_pylist()
    return sorted((r["site"], r[KEY], r[HASH_COLUMN], r["Title"]) for r in rows)


def test_evolution_on_a_delta_table_keeps_every_row_as_its_site(tmp_path: Path) -> None:
    """What the statement does to a legacy silver table, on a real Delta table: the same rows,
    ``_site`` now ``site`` (the column order kept); then the merge spec matches them by site."""
    from deltalake import QueryBuilder

    path = tmp_path / "silver_posts"
    legacy = pa.schema([(KEY, pa.int64()), ("_site", pa.string()), (HASH_COLUMN, pa.string()),
                        ("Title", pa.string())])  # fmt: skip
    rows = [dict(zip(legacy.names, (key, site, digest, title), strict=True))
            for site, key, digest, title in CURRENT]  # fmt: skip
    write_deltalake(path, pa.Table.from_pylist(rows, legacy))
    (statement,) = tables.evolution_sql(TABLE, legacy.names, "unused")
    # The statement's projection, run by deltalake's SQL engine (DataFusion quotes with ").
    projection = statement.split(" AS SELECT ", 1)[1].split(" FROM ")[0].replace("`", '"')
    query = QueryBuilder().register("t", DeltaTable(path))
    evolved = query.execute(f"SELECT {projection} FROM t").read_all()
    write_deltalake(path, evolved, mode="overwrite", schema_mode="overwrite")

    assert DeltaTable(path).schema().to_arrow().names == [KEY, "site", HASH_COLUMN, "Title"]
    assert _by_site(path) == sorted(CURRENT)
    _merge(path, BATCH)
    assert _by_site(path) == EXPECTED
