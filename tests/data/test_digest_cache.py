"""The digest cache: an unchanged file is not read again, a changed one always is, and benchmark folders use it."""

import hashlib
import os
from pathlib import Path

from gem_stages.data import digest_cache as cache_module
from gem_stages.data.digest_cache import SAMPLE, DigestCache
from gem_stages.eval.run import digest


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_unchanged_files_are_not_read_again_and_changes_are_seen(tmp_path, digest_cache):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"a" * 100)
    big.write_bytes(os.urandom(5 * SAMPLE))
    with DigestCache() as cache:
        assert (cache.md5(small), cache.md5(big)) == (md5(small), md5(big)) and cache.reads == 2
    assert digest_cache.is_file()
    with DigestCache() as cache:  # a new process's view: from the file
        assert (cache.md5(small), cache.md5(big)) == (md5(small), md5(big)) and cache.reads == 0

    os.utime(small)  # touched, same bytes: read again, same md5
    st = big.stat()
    data = bytearray(big.read_bytes())
    data[10] ^= 1  # same size, and the mtime put back: only the sampled hash can tell
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    with DigestCache() as cache:
        assert (cache.md5(small), cache.md5(big)) == (md5(small), md5(big)) and cache.reads == 2
    with DigestCache() as cache:
        cache.md5(small), cache.md5(big)
        assert cache.reads == 0


def test_an_unusable_cache_file_only_costs_reads(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "not-a-db").write_bytes(b"garbage, not sqlite" * 100)
    for where in (tmp_path / "not-a-db", tmp_path / "f" / "below-a-file.sqlite"):
        for _ in range(2):
            with DigestCache(where) as cache:
                assert cache.md5(tmp_path / "f") == md5(tmp_path / "f") and cache.reads == 1


def test_a_benchmark_folder_is_not_read_again(tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    (bench / "videos").mkdir(parents=True)
    for i in range(20):
        (bench / "videos" / f"{i}.mp4").write_bytes(os.urandom(1000 + i))
    (bench / "qa.jsonl").write_text('{"q": 1}\n')
    first = digest(bench)
    reads = []
    real = cache_module.md5_file
    monkeypatch.setattr(cache_module, "md5_file", lambda p: reads.append(p) or real(p))
    assert digest(bench) == first and reads == []
    (bench / "qa.jsonl").write_text('{"q": 2}\n')
    assert digest(bench) != first and [p.name for p in reads] == ["qa.jsonl"]
    (bench / "videos" / "3.mp4").rename(bench / "videos" / "3b.mp4")  # names count too
    assert digest(bench) != first


def test_preparing_and_reading_again_reads_no_file_for_its_digest(tmp_path, monkeypatch):
    from gem_stages.data.config import DataConfig
    from gem_stages.data.generate import prepare_dataset
    from gem_stages.data.reader import GemSamples

    from .test_data_mixture import _numbered, make_root, write_set

    root = make_root(tmp_path / "u")
    cfg = DataConfig(source="files", files=[write_set(root, "a", _numbered(30)), write_set(root, "b", _numbered(5))])
    first = prepare_dataset(cfg, tmp_path / "o1")
    reads = []
    real = cache_module.md5_file
    monkeypatch.setattr(cache_module, "md5_file", lambda p: reads.append(p) or real(p))
    assert prepare_dataset(cfg, tmp_path / "o2")["digest"] == first["digest"]
    assert len(GemSamples(tmp_path / "o2")) == 35 and reads == []
    Path(cfg.files[1].annotations).write_text(Path(cfg.files[1].annotations).read_text().replace("answer", "Answer"))
    assert prepare_dataset(cfg, tmp_path / "o3")["digest"] != first["digest"]
    assert [p.name for p in reads] == ["b.jsonl"]
