"""Tests for ferrograd.datasets: the IDX reader and the MNIST loader.

The real MNIST files live outside the project, in ``../shared/datasets/mnist``
relative to the repository root; they are read in place, never copied. The
download path is tested with a fake ``_fetch``: nothing here uses the network.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import ferrograd.datasets as datasets
from ferrograd.datasets import DatasetNotFoundError, load_mnist, read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REAL_FETCH = datasets._fetch
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MIRRORS = datasets._MNIST_MIRRORS

needs_real = pytest.mark.skipif(
    not (SHARED / "mnist").is_dir(), reason=f"real MNIST not found in {SHARED / 'mnist'}"
)


# ------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray, code: int | None = None) -> bytes:
    """Serialise ``arr`` as IDX (big-endian)."""
    codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    kind = arr.dtype.kind + str(arr.dtype.itemsize)
    if code is None:
        code = codes[kind]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def fake_mnist(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    """Small, valid MNIST-like IDX files (uncompressed), keyed by file name."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": idx_bytes(
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
        ),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_train, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, n_test, dtype=np.uint8)),
    }


def write_files(folder: Path, files: dict[str, bytes], gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeNet:
    """Stands in for ``datasets._fetch``: serves per-URL bytes or raises."""

    def __init__(self, responses: dict[str, bytes | Exception]):
        self.responses = responses
        self.calls: list[tuple[str, float]] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls.append((url, timeout))
        response = self.responses.get(url, urllib.error.URLError("no route to host"))
        if isinstance(response, Exception):
            raise response
        return response


def no_network(url: str, timeout: float) -> bytes:
    raise AssertionError(f"test tried to download {url}")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No network, no real home cache, no FERROGRAD_DATA from the caller's env."""
    monkeypatch.setattr(datasets, "_fetch", no_network)
    monkeypatch.delenv("FERROGRAD_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def fake(monkeypatch):
    """Small fake MNIST, with the checksum table and split sizes patched to match."""
    files = fake_mnist()
    monkeypatch.setattr(datasets, "_MNIST_SHA256", {k: sha(v) for k, v in files.items()})
    monkeypatch.setattr(datasets, "_MNIST_SIZES", {"train": 6, "test": 4})
    return files


def expected_arrays(files: dict[str, bytes]):
    arrays = {name: datasets._parse_idx(data, name) for name, data in files.items()}
    return (
        (arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
        (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    )


def assert_same(got, want) -> None:
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------ real MNIST


@pytest.fixture(scope="module")
def real_mnist():
    if not (SHARED / "mnist").is_dir():
        pytest.skip(f"real MNIST not found in {SHARED / 'mnist'}")
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "_fetch", no_network)
    try:
        return load_mnist(root=SHARED, download=False)
    finally:
        mp.undo()


def test_real_shapes_and_dtypes(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    assert x_train.shape == (60000, 28, 28)
    assert y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28)
    assert y_test.shape == (10000,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8
        assert a.flags.writeable
        assert a.flags.c_contiguous


def test_real_first_labels(real_mnist):
    (_, y_train), (_, y_test) = real_mnist
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_real_value_ranges(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist
    for x in (x_train, x_test):
        assert x.min() == 0
        assert x.max() == 255
    assert sorted(np.unique(y_train).tolist()) == list(range(10))
    assert sorted(np.unique(y_test).tolist()) == list(range(10))
    # Images are mostly background: a corrupt decode would not look like this.
    assert 0.05 < (x_train > 0).mean() < 0.35


@needs_real
def test_real_via_env_var(monkeypatch, real_mnist):
    monkeypatch.setenv("FERROGRAD_DATA", str(SHARED))
    (x_train, y_train), (x_test, y_test) = load_mnist(download=False)
    np.testing.assert_array_equal(y_train, real_mnist[0][1])
    np.testing.assert_array_equal(y_test, real_mnist[1][1])
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.array_equal(x_test, real_mnist[1][0])


@needs_real
def test_real_root_may_be_the_mnist_folder_itself(real_mnist):
    (_, y_train), (x_test, y_test) = load_mnist(root=SHARED / "mnist", download=False)
    np.testing.assert_array_equal(y_train, real_mnist[0][1])
    np.testing.assert_array_equal(y_test, real_mnist[1][1])
    assert np.array_equal(x_test, real_mnist[1][0])


@needs_real
def test_hardcoded_checksums_match_shared_copy():
    assert set(datasets._MNIST_SHA256) == set(FILES)
    for name in FILES:
        data = gzip.decompress((SHARED / "mnist" / (name + ".gz")).read_bytes())
        assert sha(data) == datasets._MNIST_SHA256[name], name


@needs_real
def test_real_labels_file_via_read_idx():
    labels = read_idx(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:3].tolist() == [7, 2, 1]


# ------------------------------------------------------------------ read_idx

DTYPES = ["u1", "i1", ">i2", ">i4", ">f4", ">f8"]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    if dtype[-2] == "f":
        arr = rng.standard_normal((3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(np.dtype(dtype))
        arr = rng.integers(info.min, info.max, (3, 4, 5), endpoint=True).astype(dtype)
    data = idx_bytes(arr)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)

    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.dtype.isnative
    assert out.flags.writeable
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 0  # writable, not a view of read-only bytes


def test_read_idx_big_endian_layout(tmp_path):
    ints = tmp_path / "ints"
    ints.write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFE]))
    assert read_idx(ints).tolist() == [0x01020304, -2]
    assert read_idx(ints).dtype == np.int32

    floats = tmp_path / "floats"
    floats.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + struct.pack(">f", 1.5))
    out = read_idx(floats)
    assert out.dtype == np.float32 and out.tolist() == [1.5]

    shorts = tmp_path / "shorts"
    shorts.write_bytes(bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x00, 0x80, 0x00]))
    assert read_idx(shorts).tolist() == [[256, -32768]]


def test_read_idx_detects_gzip_by_magic_not_extension(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_no_ext = tmp_path / "data.idx"
    gz_no_ext.write_bytes(gzip.compress(idx_bytes(arr)))
    plain_gz_ext = tmp_path / "data2.gz"
    plain_gz_ext.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(gz_no_ext), arr)
    np.testing.assert_array_equal(read_idx(plain_gz_ext), arr)


def test_read_idx_accepts_str_paths_and_edge_shapes(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8)))
    assert read_idx(str(empty)).shape == (0, 28, 28)
    scalar = tmp_path / "scalar"
    scalar.write_bytes(bytes([0, 0, 0x08, 0, 42]))
    out = read_idx(scalar)
    assert out.shape == () and int(out) == 42


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated IDX header"),
        (b"\x00\x00\x08", "truncated IDX header"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "truncated IDX header"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "not an IDX file"),
        (b"\x00\x05\x08\x01\x00\x00\x00\x01\x07", "not an IDX file"),
        (b"PK\x03\x04 not idx", "not an IDX file"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x07", "unknown IDX data type code 0x0A"),
        (b"\x00\x00\xff\x01\x00\x00\x00\x01\x07", "unknown IDX data type code 0xFF"),
        (_header(0x08, (2, 3)) + bytes(5), "truncated IDX data"),
        (_header(0x0C, (2,)) + bytes(7), "truncated IDX data"),
        (_header(0x08, (2, 3)), "truncated IDX data"),
        (_header(0x08, (2, 3)) + bytes(7), "extra trailing bytes"),
        (_header(0x0E, (1,)) + bytes(9), "extra trailing bytes"),
    ],
    ids=[
        "empty",
        "3-bytes",
        "dims-cut",
        "magic-byte0",
        "magic-byte1",
        "zip-file",
        "code-0x0a",
        "code-0xff",
        "data-short",
        "int32-short",
        "no-data",
        "data-long",
        "float64-long",
    ],
)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx_errors_name_the_file(tmp_path, data, match, gz):
    path = tmp_path / "broken-idx-file"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda gz: gz[:-6],  # stream cut short
        lambda gz: gz[:10] + bytes(b ^ 0x55 for b in gz[10:]),  # deflate data garbled
        lambda gz: gz[:-8] + b"\x00" * 8,  # CRC / size trailer wrong
        lambda gz: b"\x1f\x8b" + b"garbage",  # gzip magic, then nonsense
    ],
    ids=["cut", "garbled", "bad-crc", "garbage"],
)
def test_read_idx_corrupt_gzip(tmp_path, mangle):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "corrupt.gz"
    path.write_bytes(mangle(data))
    with pytest.raises(ValueError, match="corrupt gzip stream") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ------------------------------------------------------- load_mnist on disk


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_load_from_root_mnist(tmp_path, fake, gz):
    write_files(tmp_path / "data" / "mnist", fake, gz=gz)
    got = load_mnist(root=tmp_path / "data")
    assert_same(got, expected_arrays(fake))
    (x_train, y_train), (x_test, y_test) = got
    assert x_train.shape == (6, 28, 28) and y_train.shape == (6,)
    assert x_test.shape == (4, 28, 28) and y_test.shape == (4,)


def test_load_root_as_str_and_mixed_plain_and_gz(tmp_path, fake):
    folder = tmp_path / "mnist"
    names = list(fake)
    write_files(folder, {k: fake[k] for k in names[:2]})
    write_files(folder, {k: fake[k] for k in names[2:]}, gz=True)
    assert_same(load_mnist(root=str(tmp_path)), expected_arrays(fake))


def test_load_root_pointing_at_files_directly(tmp_path, fake):
    write_files(tmp_path / "files", fake, gz=True)
    assert_same(load_mnist(root=tmp_path / "files", download=False), expected_arrays(fake))


def test_plain_file_preferred_over_gz(tmp_path, fake):
    folder = tmp_path / "mnist"
    write_files(folder, fake)
    other = fake_mnist(seed=99)
    write_files(folder, other, gz=True)
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))


def test_env_var_used_when_no_root(tmp_path, monkeypatch, fake):
    write_files(tmp_path / "envdata" / "mnist", fake)
    monkeypatch.setenv("FERROGRAD_DATA", str(tmp_path / "envdata"))
    assert_same(load_mnist(download=False), expected_arrays(fake))


def test_root_takes_precedence_over_env_var(tmp_path, monkeypatch, fake):
    write_files(tmp_path / "root" / "mnist", fake)
    write_files(tmp_path / "env" / "mnist", fake_mnist(seed=5))
    monkeypatch.setenv("FERROGRAD_DATA", str(tmp_path / "env"))
    assert_same(load_mnist(root=tmp_path / "root", download=False), expected_arrays(fake))


def test_default_cache_honours_xdg(tmp_path, monkeypatch, fake):
    write_files(tmp_path / "xdg" / "ferrograd" / "mnist", fake, gz=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert_same(load_mnist(download=False), expected_arrays(fake))


def test_default_cache_in_home_without_xdg(tmp_path, monkeypatch, fake):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(datasets.Path, "home", lambda: tmp_path / "home")
    write_files(tmp_path / "home" / ".cache" / "ferrograd" / "mnist", fake)
    assert_same(load_mnist(download=False), expected_arrays(fake))


def test_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setattr(datasets.Path, "home", lambda: tmp_path / "home")
    assert datasets._default_cache_dir() == tmp_path / "home" / ".cache" / "ferrograd"


def test_missing_files_without_download_lists_places(tmp_path, monkeypatch):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=root, download=False)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert str(root / "mnist") in msg
    assert f"\n  {root}\n" in msg  # root itself is searched too
    for name in FILES:
        assert name in msg
    assert "root=" in msg and "FERROGRAD_DATA" in msg
    assert "download=False" in msg


def test_missing_files_default_location_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(download=False)
    msg = str(info.value)
    assert str(tmp_path / "xdg-cache" / "ferrograd" / "mnist") in msg
    assert "root=" in msg and "FERROGRAD_DATA" in msg


def test_partially_missing_lists_only_missing(tmp_path, fake):
    write_files(tmp_path / "mnist", {"train-images-idx3-ubyte": fake["train-images-idx3-ubyte"]})
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(root=tmp_path, download=False)
    first_line = str(info.value).splitlines()[0]
    assert "train-labels-idx1-ubyte" in first_line
    assert "train-images-idx3-ubyte" not in first_line


# ------------------------------------------------------ load_mnist validation


def _with(files: dict[str, bytes], name: str, arr: np.ndarray, code: int | None = None):
    out = dict(files)
    out[name] = idx_bytes(arr, code)
    return out


@pytest.mark.parametrize(
    ("name", "arr", "match"),
    [
        ("train-labels-idx1-ubyte", np.array([0, 1, 2, 10, 4, 5], np.uint8), "0..9"),
        ("t10k-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8), "3 labels"),
        ("train-images-idx3-ubyte", np.zeros((6, 28, 27), np.uint8), r"\(N, 28, 28\)"),
        ("t10k-images-idx3-ubyte", np.zeros((4, 784), np.uint8), r"\(N, 28, 28\)"),
        ("t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.int32), "uint8"),
        ("train-labels-idx1-ubyte", np.zeros((6, 1), np.uint8), r"\(N,\)"),
        ("t10k-labels-idx1-ubyte", np.zeros(4, np.float32), "uint8"),
    ],
    ids=[
        "label-10",
        "count-mismatch",
        "image-27",
        "image-flat",
        "image-int32",
        "label-2d",
        "label-f32",
    ],
)
def test_load_rejects_bad_content(tmp_path, fake, name, arr, match):
    write_files(tmp_path / "mnist", _with(fake, name, arr))
    with pytest.raises(ValueError, match=match) as info:
        load_mnist(root=tmp_path, download=False)
    assert name in str(info.value)


def test_load_rejects_corrupt_idx_file(tmp_path, fake):
    files = dict(fake)
    files["t10k-images-idx3-ubyte"] = files["t10k-images-idx3-ubyte"][:-1]
    write_files(tmp_path / "mnist", files, gz=True)
    with pytest.raises(ValueError, match="truncated IDX data") as info:
        load_mnist(root=tmp_path, download=False)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)


def test_load_enforces_real_split_sizes(tmp_path):
    # Unpatched sizes: a valid but small file set is not MNIST.
    write_files(tmp_path / "mnist", fake_mnist())
    with pytest.raises(ValueError, match="expected 60000 samples, found 6") as info:
        load_mnist(root=tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_check_split_sample_count():
    images = np.zeros((5, 28, 28), np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    datasets._check_split(images, labels, "img", "lab")
    datasets._check_split(images, labels, "img", "lab", expected_n=5)
    with pytest.raises(ValueError, match="img: expected 10000 samples, found 5"):
        datasets._check_split(images, labels, "img", "lab", expected_n=10000)
    assert datasets._MNIST_SIZES == {"train": 60000, "test": 10000}


def test_check_split_empty_labels_do_not_crash():
    with pytest.raises(ValueError, match="expected 1 samples, found 0"):
        datasets._check_split(
            np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), "i", "l", expected_n=1
        )


# --------------------------------------------------------------- downloading


def serve_from(mirror: str, files: dict[str, bytes]) -> dict[str, bytes | Exception]:
    return {mirror + name + ".gz": gzip.compress(data) for name, data in files.items()}


def test_download_success_writes_atomically(tmp_path, monkeypatch, fake):
    net = FakeNet(serve_from(MIRRORS[0], fake))
    monkeypatch.setattr(datasets, "_fetch", net)
    replaced: list[tuple[Path, Path]] = []
    real_replace = datasets.os.replace

    def spy_replace(src, dst):
        src, dst = Path(src), Path(dst)
        assert src.parent == dst.parent  # temp file in the same folder
        assert src.exists() and not dst.exists()
        replaced.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(datasets.os, "replace", spy_replace)

    got = load_mnist(root=tmp_path / "data")
    assert_same(got, expected_arrays(fake))
    target = tmp_path / "data" / "mnist"
    assert leftovers(target) == sorted(name + ".gz" for name in FILES)
    assert sorted(dst.name for _, dst in replaced) == sorted(name + ".gz" for name in FILES)
    assert all(src.name != dst.name for src, dst in replaced)
    # Only the first mirror was needed, each file once, with a timeout.
    assert sorted(url for url, _ in net.calls) == sorted(MIRRORS[0] + n + ".gz" for n in FILES)
    assert all(t == datasets._DOWNLOAD_TIMEOUT and 0 < t <= 120 for _, t in net.calls)
    # Written bytes are exactly what the mirror served.
    for name in FILES:
        assert (target / (name + ".gz")).read_bytes() == net.responses[MIRRORS[0] + name + ".gz"]

    # A second call finds the files and does not download again.
    monkeypatch.setattr(datasets, "_fetch", no_network)
    assert_same(load_mnist(root=tmp_path / "data"), expected_arrays(fake))


def test_download_into_default_cache(tmp_path, monkeypatch, fake):
    monkeypatch.setattr(datasets, "_fetch", FakeNet(serve_from(MIRRORS[1], fake)))
    assert_same(load_mnist(), expected_arrays(fake))
    cache = tmp_path / "xdg-cache" / "ferrograd" / "mnist"
    assert leftovers(cache) == sorted(name + ".gz" for name in FILES)


def test_download_into_env_var_folder(tmp_path, monkeypatch, fake):
    monkeypatch.setenv("FERROGRAD_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(datasets, "_fetch", FakeNet(serve_from(MIRRORS[0], fake)))
    assert_same(load_mnist(), expected_arrays(fake))
    assert len(leftovers(tmp_path / "env" / "mnist")) == 4


def test_download_only_missing_files(tmp_path, monkeypatch, fake):
    names = list(fake)
    write_files(tmp_path / "mnist", {k: fake[k] for k in names[1:]})
    net = FakeNet(serve_from(MIRRORS[0], fake))
    monkeypatch.setattr(datasets, "_fetch", net)
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))
    assert [url for url, _ in net.calls] == [MIRRORS[0] + names[0] + ".gz"]


def test_download_falls_back_through_mirrors(tmp_path, monkeypatch, fake):
    name = "train-labels-idx1-ubyte"
    others = {k: v for k, v in fake.items() if k != name}
    write_files(tmp_path / "mnist", others)
    responses: dict[str, bytes | Exception] = {
        MIRRORS[0] + name + ".gz": urllib.error.URLError("timed out"),
        MIRRORS[1] + name + ".gz": gzip.compress(fake[name][:-1] + b"\x07"),  # wrong sha
        MIRRORS[2] + name + ".gz": gzip.compress(fake[name]),
    }
    net = FakeNet(responses)
    monkeypatch.setattr(datasets, "_fetch", net)
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))
    assert [url for url, _ in net.calls] == [m + name + ".gz" for m in MIRRORS]
    assert leftovers(tmp_path / "mnist") == sorted([*others, name + ".gz"])


def test_download_skips_corrupt_gzip_from_a_mirror(tmp_path, monkeypatch, fake):
    name = "t10k-labels-idx1-ubyte"
    write_files(tmp_path / "mnist", {k: v for k, v in fake.items() if k != name})
    good = gzip.compress(fake[name])
    monkeypatch.setattr(
        datasets,
        "_fetch",
        FakeNet({MIRRORS[0] + name + ".gz": good[:-5], MIRRORS[1] + name + ".gz": good}),
    )
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))


def test_download_of_uncompressed_body_is_stored_plain(tmp_path, monkeypatch, fake):
    name = "t10k-labels-idx1-ubyte"
    write_files(tmp_path / "mnist", {k: v for k, v in fake.items() if k != name})
    monkeypatch.setattr(datasets, "_fetch", FakeNet({MIRRORS[0] + name + ".gz": fake[name]}))
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))
    assert (tmp_path / "mnist" / name).read_bytes() == fake[name]


def test_checksum_mismatch_everywhere_leaves_nothing(tmp_path, monkeypatch, fake):
    tampered = {k: v[:-1] + bytes([v[-1] ^ 1]) for k, v in fake.items()}
    responses: dict[str, bytes | Exception] = {}
    for mirror in MIRRORS:
        responses.update(serve_from(mirror, tampered))
    monkeypatch.setattr(datasets, "_fetch", FakeNet(responses))
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=tmp_path)
    msg = str(info.value)
    assert "sha256 mismatch" in msg
    assert msg.count("sha256 mismatch") == len(MIRRORS) * len(FILES)
    assert leftovers(tmp_path / "mnist") == []


def test_real_checksums_reject_fake_download(tmp_path, monkeypatch):
    # Unpatched checksum table: a well-formed but wrong file must be refused.
    files = fake_mnist()
    monkeypatch.setattr(datasets, "_fetch", FakeNet(serve_from(MIRRORS[0], files)))
    with pytest.raises(FileNotFoundError, match="sha256 mismatch"):
        load_mnist(root=tmp_path)
    assert leftovers(tmp_path / "mnist") == []


def test_all_mirrors_failing(tmp_path, monkeypatch):
    net = FakeNet({})  # every URL: URLError
    monkeypatch.setattr(datasets, "_fetch", net)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(root=tmp_path)
    msg = str(info.value)
    for mirror in MIRRORS:
        assert mirror in msg
        for name in FILES:
            assert mirror + name + ".gz" in msg
    assert "URLError" in msg and "no route to host" in msg
    assert "root=" in msg and "FERROGRAD_DATA" in msg and "by hand" in msg
    assert str(tmp_path / "mnist") in msg
    assert len(net.calls) == len(MIRRORS) * len(FILES)
    assert leftovers(tmp_path / "mnist") == []


@pytest.mark.parametrize(
    "exc",
    [OSError("connection reset"), TimeoutError("timed out"), ValueError("bad url")],
    ids=["oserror", "timeout", "valueerror"],
)
def test_any_fetch_exception_moves_to_next_mirror(tmp_path, monkeypatch, fake, exc):
    name = "t10k-labels-idx1-ubyte"
    write_files(tmp_path / "mnist", {k: v for k, v in fake.items() if k != name})
    net = FakeNet({MIRRORS[0] + name + ".gz": exc, MIRRORS[1] + name + ".gz": exc})
    net.responses[MIRRORS[2] + name + ".gz"] = gzip.compress(fake[name])
    monkeypatch.setattr(datasets, "_fetch", net)
    assert_same(load_mnist(root=tmp_path), expected_arrays(fake))


def test_write_failure_leaves_no_temp_file(tmp_path, monkeypatch, fake):
    monkeypatch.setattr(datasets, "_fetch", FakeNet(serve_from(MIRRORS[0], fake)))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(datasets.os, "replace", failing_replace)
    with pytest.raises(DatasetNotFoundError, match="could not write") as info:
        load_mnist(root=tmp_path)
    assert "disk full" in str(info.value)
    assert leftovers(tmp_path / "mnist") == []


def test_download_false_never_fetches(tmp_path, monkeypatch):
    net = FakeNet({})
    monkeypatch.setattr(datasets, "_fetch", net)
    with pytest.raises(FileNotFoundError):
        load_mnist(root=tmp_path, download=False)
    assert net.calls == []


def test_real_fetch_reads_a_url(tmp_path):
    # file:// needs no network and exercises the real urllib code path.
    path = tmp_path / "payload.bin"
    path.write_bytes(b"\x00\x01hello")
    assert REAL_FETCH(path.as_uri(), 5.0) == b"\x00\x01hello"
    with pytest.raises(OSError):
        REAL_FETCH((tmp_path / "absent.bin").as_uri(), 5.0)


def test_public_api():
    assert set(datasets.__all__) == {"DatasetNotFoundError", "load_mnist", "read_idx"}
    for name in ("load_mnist", "read_idx"):
        doc = getattr(datasets, name).__doc__
        assert doc and "Parameters" in doc and "Returns" in doc and "Raises" in doc
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert datasets.__doc__


def test_gzip_bomb_is_refused_before_it_expands(tmp_path):
    """A small gzip stream whose IDX header announces gigabytes fails at the
    header, without decompressing; one that is not IDX stops at 4 bytes."""
    import tracemalloc

    header = struct.pack(">BBBBI", 0, 0, 8, 1, 2**31)
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(header + bytes(64 << 20)))
    zeros = tmp_path / "zeros.gz"
    zeros.write_bytes(gzip.compress(bytes(64 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="announces 2,147,483,656 bytes"):
            read_idx(bomb)
        with pytest.raises(ValueError, match="unknown IDX data type code 0x00"):
            read_idx(zeros)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # neither stream was expanded
