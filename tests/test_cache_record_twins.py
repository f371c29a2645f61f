"""The disk and memory cache records (cache/records.py) keep the same records the same way."""

from __future__ import annotations

import json

import pytest

from builder.cache.records import CacheRecord, DiskCacheRecords, MemoryCacheRecords

KEY = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def record(key: str = KEY, size: int = 123) -> CacheRecord:
    return CacheRecord(key, "sha256:" + "c" * 64, "sha256:" + "d" * 64, size,
                       "application/vnd.oci.image.layer.v1.tar+gzip", "2023-11-14T22:13:20Z")


def _damage_on_disk(records: DiskCacheRecords, key: str) -> None:
    with open(records._path(key), "w") as f:
        f.write('{"key": "truncated')


def _damage_in_memory(records: MemoryCacheRecords, key: str) -> None:
    records.texts[key] = '{"key": "truncated'


@pytest.fixture(params=["disk", "memory"])
def twin(request, tmp_path):
    if request.param == "disk":
        return DiskCacheRecords(str(tmp_path / "records")), _damage_on_disk
    return MemoryCacheRecords(), _damage_in_memory


def test_a_record_round_trips(twin):
    records, _ = twin
    records.put(record())
    assert records.get(KEY) == record()
    assert records.keys() == [KEY]


def test_an_unknown_key_is_a_miss(twin):
    records, _ = twin
    assert records.get(KEY) is None


def test_a_record_is_replaced_whole(twin):
    records, _ = twin
    records.put(record(size=1))
    records.put(record(size=2))
    assert records.get(KEY).size == 2 and records.keys() == [KEY]


def test_deleting_forgets_one_key(twin):
    records, _ = twin
    records.put(record(OTHER))
    records.put(record())
    records.delete(KEY)
    records.delete(KEY)   # twice: nothing there is not an error
    assert records.get(KEY) is None and records.keys() == [OTHER]


def test_a_damaged_record_is_a_miss_not_an_error(twin):
    records, damage = twin
    records.put(record())
    damage(records, KEY)
    assert records.get(KEY) is None


def test_both_twins_keep_the_same_json(tmp_path):
    disk, memory = DiskCacheRecords(str(tmp_path / "records")), MemoryCacheRecords()
    for records in (disk, memory):
        records.put(record())
    with open(disk._path(KEY)) as f:
        assert json.load(f) == json.loads(memory.texts[KEY]) == record().to_json()
