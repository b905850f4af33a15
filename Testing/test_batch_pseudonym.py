"""Per-subject seeds, subject ids and shard assignment (cpmae.pseudonym)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmae.errors import InputError
from cpmae.pseudonym import (SEED_BITS, parse_shard, pseudonym, resolve_key, seed_for_subject, shard_of,
                             subject_of)


@pytest.mark.parametrize("rel, subject", [
    ("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01"),
    ("sub-01/ses-2/anat/sub-01_ses-2_run-2_T1w.nii.gz", "sub-01"),
    ("sub-ABC/anat/sub-ABC_T2w.nii", "sub-ABC"),
    ("patient7.nrrd", "patient7"),
    ("scan_sub-12_T1w.nii.gz", "sub-12"),
    ("head.scan.nii.gz", "head.scan"),
])
def test_subject_of(rel, subject):
    assert subject_of(rel) == subject


def test_seeds_same_subject_same_seed_different_subjects_differ():
    key = resolve_key("secret", 0)
    seeds = [seed_for_subject(f"sub-{i:04d}", key) for i in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2 ** SEED_BITS for s in seeds)
    assert seed_for_subject("sub-0001", key) == seeds[1]
    assert seed_for_subject("sub-0001", resolve_key("other", 0)) != seeds[1]
    assert len(pseudonym("sub-0001", key)) == 64


def test_key_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("CPMAE_PSEUDONYM_KEY", raising=False)
    assert resolve_key(None, 3) != resolve_key(None, 4)  # without a key, --seed picks the mapping
    f = tmp_path / "key.txt"
    f.write_text("s3cret\n", encoding="utf-8")
    assert resolve_key(f"@{f}", 0) == resolve_key("s3cret", 0) == b"s3cret"
    monkeypatch.setenv("CPMAE_PSEUDONYM_KEY", "s3cret")
    assert resolve_key(None, 0) == b"s3cret"
    f.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        resolve_key(f"@{f}", 0)
    with pytest.raises(InputError, match="cannot read") as exc:
        resolve_key(f"@{tmp_path / 'missing'}", 0)
    assert "missing" in str(exc.value)


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/8", (3, 8)), (" 7 / 8 ", (7, 8))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["8/8", "1/0", "-1/4", "a/b", "3", "", "1/2/3"])
def test_parse_shard_refuses(text):
    with pytest.raises(InputError, match="shard"):
        parse_shard(text)


case_ids = st.lists(st.text(alphabet="abcdefsub-_/0123456789.", min_size=1, max_size=30), unique=True, max_size=60)


@settings(max_examples=100, deadline=None)
@given(case_ids, st.integers(1, 12), st.text(alphabet="xyz0123456789", min_size=1, max_size=10))
def test_shards_partition_and_are_stable_when_cases_are_added(ids, n, new_id):
    shards = [[c for c in ids if shard_of(c, n) == i] for i in range(n)]
    assert sorted(c for s in shards for c in s) == sorted(ids)  # union = all, each exactly once
    more = ids + [new_id]
    assert all(shard_of(c, n) == shard_of(c, n) for c in more)  # deterministic
    before = {c: shard_of(c, n) for c in ids}
    assert {c: shard_of(c, n) for c in ids if c in more} == before  # adding a file moves nobody


def test_shards_are_roughly_balanced():
    counts = [0] * 8
    for i in range(4000):
        counts[shard_of(f"sub-{i}/anat/sub-{i}_T1w.nii.gz", 8)] += 1
    assert min(counts) > 400 and max(counts) < 600
