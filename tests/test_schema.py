"""The Parquet contracts: round trips through grainclip and through other Arrow readers, and rejections."""

from __future__ import annotations

import math

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grainclip import schema
from grainclip.schema import SchemaError, Status


def annotation_rows() -> list[dict]:
    return [
        {
            "image_id": "a",
            "image": b"\x89PNG...",
            "caption": "a photo of a florp",
            "width": 64,
            "height": 48,
            "llm_caption": "a florp with a red crest",
            "descriptions": ["red crest", "blue wings"],
            "regions": [
                {"text": "red crest", "box": [0.1, 0.2, 0.3, 0.4], "score": 0.9},
                {"text": "blue wings", "box": [0.0, 0.0, 1.0, 1.0], "score": 0.5},
            ],
            "status": "ok",
            "error": None,
            "run_id": "r1",
            "class_name": "florp",
        },
        {
            "image_id": "b",
            "image": None,
            "image_uri": "file:///nowhere.png",
            "caption": None,
            "width": 10,
            "height": 10,
            "descriptions": [],
            "regions": [],
            "status": "decode_failed",
            "error": "image file not found",
            "run_id": "r1",
            "class_name": "zanthe",
        },
    ]


def test_annotations_round_trip_through_other_readers(tmp_path):
    table = pa.Table.from_pylist(annotation_rows())
    path = schema.write_shard(table, tmp_path / "part-0.parquet", "annotations")
    assert schema.kind_of(path) == "annotations"

    back = schema.read_table(tmp_path, "annotations")
    assert back.column("image_id").to_pylist() == ["a", "b"]
    assert back.schema.field("regions").type == pa.list_(schema.REGION_TYPE)
    assert back.column("class_name").to_pylist() == ["florp", "zanthe"]  # extra columns carried through

    # Readers that know nothing about grainclip.
    frame = pd.read_parquet(path)
    assert list(frame["descriptions"][0]) == ["red crest", "blue wings"]
    assert frame["regions"][0][0]["box"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    polars_frame = pl.read_parquet(path)
    assert polars_frame["status"].to_list() == ["ok", "decode_failed"]
    assert polars_frame["regions"][0][1]["score"] == pytest.approx(0.5)
    n_regions = duckdb.sql(f"select sum(len(regions)) from read_parquet('{path}')").fetchall()[0][0]
    assert n_regions == 2
    first_x2 = duckdb.sql(f"select regions[1].box[3] from read_parquet('{path}') where image_id = 'a'").fetchall()[0][0]
    assert first_x2 == pytest.approx(0.3)


def test_images_contract_round_trip_and_metadata(tmp_path):
    table = pa.table({"image_id": ["x"], "image": [b"abc"], "caption": ["hi"], "width": [3], "height": [4]})
    path = schema.write_shard(table, tmp_path / "images.parquet", "images")
    meta = pq.read_schema(path).metadata
    assert meta[schema.METADATA_KEY] == f"images/{schema.SCHEMA_VERSION}".encode()
    back = schema.read_table(path, "images")
    assert back.schema.field("width").type == pa.int32()
    assert back.column("image_uri").null_count == 1


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ({"text": "red crest", "box": [0.1, 0.2, 1.3, 0.4], "score": 0.9}, r"outside \[0, 1\]"),
        ({"text": "red crest", "box": [0.1, math.nan, 0.3, 0.4], "score": 0.9}, "non-finite"),
        ({"text": "red crest", "box": [0.5, 0.2, 0.3, 0.4], "score": 0.9}, "x1 > x2"),
        ({"text": "", "box": [0.1, 0.2, 0.3, 0.4], "score": 0.9}, "text is empty"),
        ({"text": "red crest", "box": [0.1, 0.2, 0.3, 0.4], "score": math.inf}, "score"),
    ],
)
def test_invalid_regions_are_rejected_with_the_row_named(tmp_path, region, message):
    rows = annotation_rows()
    rows[0]["regions"] = [region]
    with pytest.raises(SchemaError, match=message) as info:
        schema.write_shard(pa.Table.from_pylist(rows), tmp_path / "bad.parquet", "annotations")
    assert "image_id='a'" in str(info.value)
    assert not list(tmp_path.iterdir()), "nothing may be written for an invalid table"


def test_wrong_types_and_missing_columns_are_rejected():
    with pytest.raises(SchemaError, match="column 'width' has type string"):
        schema.validate(pa.table({"image_id": ["x"], "image": [b"a"], "width": ["wide"], "height": [1]}), "images")
    with pytest.raises(SchemaError, match="required column 'status' is missing"):
        schema.validate(pa.table({"image_id": ["x"]}), "annotations")
    with pytest.raises(SchemaError, match="status not in"):
        rows = annotation_rows()
        rows[1]["status"] = "weird"
        schema.validate(pa.Table.from_pylist(rows), "annotations")
    with pytest.raises(SchemaError, match="neither image bytes nor image_uri"):
        schema.validate(pa.table({"image_id": ["x"], "width": [1], "height": [1]}), "images")
    with pytest.raises(SchemaError, match="image_id is empty"):
        schema.validate(pa.table({"image_id": [""], "image": [b"a"]}), "images")
    with pytest.raises(SchemaError, match="unknown table kind"):
        schema.validate(pa.table({"image_id": ["x"]}), "captions")


def test_statuses_are_the_documented_ones():
    assert set(schema.STATUSES) == {s.value for s in Status}
    assert {"ok", "no_regions", "describe_failed", "decode_failed"} <= set(schema.STATUSES)


def test_reader_ignores_temporary_files_and_streams_batches(tmp_path):
    table = pa.Table.from_pylist(annotation_rows())
    schema.write_shard(table, tmp_path / "part-0.parquet", "annotations")
    (tmp_path / ".part-1.parquet.123.tmp").write_bytes(b"half written")
    (tmp_path / "_staging").mkdir()
    (tmp_path / "_staging" / "x.parquet").write_bytes(b"junk")
    assert [p.name for p in schema.parquet_files(tmp_path)] == ["part-0.parquet"]
    batches = list(schema.iter_batches(tmp_path, columns=["image_id"], batch_size=1))
    assert [b.num_rows for b in batches] == [1, 1]
    with pytest.raises(FileNotFoundError):
        schema.read_table(tmp_path / "missing", "annotations")
