"""Standard datasets, loaded as NumPy arrays.

Currently this holds MNIST (:func:`load_mnist`) and the parser for its IDX
file format (:func:`read_idx`)::

    from ferrograd.datasets import load_mnist

    (x_train, y_train), (x_test, y_test) = load_mnist()

Where the MNIST files are looked for, in this order of precedence:

1. ``root/mnist`` (or ``root`` itself) when ``root=`` is given;
2. otherwise ``$FERROGRAD_DATA/mnist`` (or ``$FERROGRAD_DATA`` itself) when
   the ``FERROGRAD_DATA`` environment variable is set;
3. otherwise the user cache, ``$XDG_CACHE_HOME/ferrograd/mnist``, which
   defaults to ``~/.cache/ferrograd/mnist``.

Missing files are downloaded (when ``download=True``) from public mirrors
into ``root/mnist``, ``$FERROGRAD_DATA/mnist`` or the user cache, checked
against the published SHA-256 checksums of the uncompressed files, and
written atomically, so an interrupted download never leaves a partial file.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["DatasetNotFoundError", "load_mnist", "read_idx"]

PathLike = Union[str, "os.PathLike[str]"]

#: IDX type code -> big-endian NumPy dtype of the stored values.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

#: The four MNIST files (without ``.gz``), keyed by role.
_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: SHA-256 of the *decompressed* MNIST files. The gzip wrappers differ from
#: mirror to mirror, the IDX content does not.
_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Number of samples in each split.
_MNIST_SIZES: dict[str, int] = {"train": 60000, "test": 10000}

#: Mirrors tried in order; each serves ``<name>.gz``.
_MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: Seconds to wait on a mirror before giving up on it.
_DOWNLOAD_TIMEOUT = 30.0

_ENV_VAR = "FERROGRAD_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded.

    The message lists every place that was searched, every download attempt
    (if any) and how to point ferrograd at a local copy.
    """


# --------------------------------------------------------------------------- IDX


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the format of the MNIST files) into an array.

    The file may be plain or gzip-compressed; compression is detected from
    the gzip magic bytes (``1f 8b``), not from the file name.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    numpy.ndarray
        A writable, native-endian array with the shape given by the file's
        header and the dtype given by its type code: ``0x08`` uint8,
        ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
        ``0x0E`` float64.

    Raises
    ------
    ValueError
        If the file is not valid IDX (wrong magic number, unknown type code,
        truncated header, fewer or more data bytes than the header
        announces) or is a corrupt gzip stream. The message names the file.
    OSError
        If the file cannot be read (``FileNotFoundError`` if it is missing).

    Examples
    --------
    >>> images = read_idx("mnist/train-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw: bytes | bytearray = f.read()
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(bytes(raw), str(path))
    return _parse_idx(raw, str(path))


# DEFLATE expands at most about 1032:1; anything claiming more is a bomb.
_GZIP_MAX_RATIO = 1100


def _gunzip(data: bytes, name: str) -> bytearray:
    """Decompress a gzip stream (members one after another), turning every
    failure into a ValueError. The output is capped before it is produced:
    by what the IDX header inside announces (plus one byte, so that extra
    bytes are still reported), and by what a stream of this size can expand
    to, so a gzip bomb fails fast instead of filling memory."""
    limit = len(data) * _GZIP_MAX_RATIO + 4096
    out = bytearray()
    rest = data
    try:
        while True:
            d = zlib.decompressobj(wbits=31)
            while not d.eof:
                cap = limit
                if len(out) >= 4 and not _idx_prefix(out):
                    return out  # not IDX: _parse_idx says why
                announced = _idx_size(bytes(out[:1024])) if len(out) >= 4 else None
                if announced is not None:
                    if announced > limit:
                        raise ValueError(
                            f"{name}: the IDX header announces {announced:,} bytes, more "
                            f"than a {len(data):,}-byte gzip stream can hold"
                        )
                    cap = announced + 1
                if len(out) >= cap:
                    if announced is None:
                        raise ValueError(f"{name}: gzip stream expands past {limit:,} bytes")
                    return out  # one byte too many: _parse_idx reports it
                # Small steps until the header is known, then large ones.
                step = 1 << 24 if announced is not None else 1024
                chunk = d.decompress(rest, min(cap - len(out), step))
                rest = d.unconsumed_tail
                out += chunk
                if not chunk and not rest and not d.eof:
                    raise ValueError(f"{name}: corrupt gzip stream (truncated)")
            rest = d.unused_data
            if not rest:
                return out  # a bytearray: no copy of the whole file
            if rest[:2] != _GZIP_MAGIC:
                raise ValueError(f"{name}: {len(rest)} bytes after the gzip stream")
    except zlib.error as exc:
        raise ValueError(f"{name}: corrupt gzip stream ({exc})") from exc


def _idx_prefix(data: bytes | bytearray) -> bool:
    """Whether the first four bytes are an IDX magic number."""
    return data[0] == 0 and data[1] == 0 and data[2] in _IDX_DTYPES


def _idx_size(header: bytes) -> int | None:
    """Total bytes an IDX file with this header has, or None when the header
    is not complete (or not IDX: _parse_idx reports that)."""
    if len(header) < 4 or header[0] != 0 or header[1] != 0 or header[2] not in _IDX_DTYPES:
        return None
    ndim = header[3]
    if len(header) < 4 + 4 * ndim:
        return None
    count = 1
    for dim in struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim]):
        count *= dim
    return 4 + 4 * ndim + count * _IDX_DTYPES[header[2]].itemsize


def _parse_idx(data: bytes | bytearray, name: str) -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file."""
    if len(data) < 4:
        raise ValueError(
            f"{name}: truncated IDX header: {len(data)} bytes, need at least 4 for the magic number"
        )
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{name}: not an IDX file: magic number starts with {data[:2].hex()}, expected 0000"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{name}: unknown IDX data type code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{name}: truncated IDX header: {ndim} dimensions need {header_len} "
            f"bytes, file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    expected = count * dtype.itemsize
    actual = len(data) - header_len
    shape = " x ".join(str(d) for d in dims) or "scalar"
    if actual < expected:
        raise ValueError(
            f"{name}: truncated IDX data: header says {shape} {dtype.name} "
            f"({expected} bytes), file has only {actual} data bytes"
        )
    if actual > expected:
        raise ValueError(
            f"{name}: corrupt IDX file: header says {shape} {dtype.name} "
            f"({expected} bytes), file has {actual - expected} extra trailing bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len)
    # astype always copies here: the result is writable and native-endian.
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


# ------------------------------------------------------------------- locations


def _default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ferrograd`` or ``~/.cache/ferrograd``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative paths are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ferrograd"
    return Path.home() / ".cache" / "ferrograd"


def _search_dirs(root: PathLike | None, name: str) -> tuple[list[Path], Path]:
    """Folders to search for dataset ``name``, and the folder to download into."""
    if root is not None:
        base = Path(root).expanduser()
        return [base / name, base], base / name
    env = os.environ.get(_ENV_VAR, "")
    if env:
        base = Path(env).expanduser()
        return [base / name, base], base / name
    target = _default_cache_dir() / name
    return [target], target


def _find_file(dirs: list[Path], filename: str) -> Path | None:
    """First of ``dir/filename``, ``dir/filename.gz`` over ``dirs`` that exists."""
    for d in dirs:
        for candidate in (d / filename, d / (filename + ".gz")):
            if candidate.is_file():
                return candidate
    return None


# -------------------------------------------------------------------- download


def _fetch(url: str, timeout: float) -> bytes:
    """Return the body of ``url``; raise on any network or HTTP error."""
    request = urllib.request.Request(url, headers={"User-Agent": "ferrograd"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _download(
    filename: str, target_dir: Path, checksums: dict[str, str]
) -> tuple[Path | None, list[str]]:
    """Download ``filename`` (as ``.gz``) from the first mirror that serves it
    with the right checksum.

    Returns the written path (or None if every mirror failed) and one line
    per failed attempt.
    """
    failures: list[str] = []
    expected = checksums[filename]
    for mirror in _MNIST_MIRRORS:
        url = mirror + filename + ".gz"
        try:
            body = _fetch(url, _DOWNLOAD_TIMEOUT)
        except Exception as exc:  # any failure: try the next mirror
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        compressed = body[:2] == _GZIP_MAGIC
        try:
            content = _gunzip(body, url) if compressed else body
        except ValueError as exc:
            failures.append(str(exc))
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != expected:
            failures.append(f"{url}: sha256 mismatch (got {digest}, expected {expected})")
            continue
        dest = target_dir / (filename + ".gz" if compressed else filename)
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(dest, body)
        except OSError as exc:
            failures.append(f"{url}: downloaded, but could not write {dest}: {exc}")
            # Another mirror will not fix a local write error.
            break
        return dest, failures
    return None, failures


# ----------------------------------------------------------------------- MNIST


def _check_split(
    images: np.ndarray,
    labels: np.ndarray,
    images_path: PathLike,
    labels_path: PathLike,
    expected_n: int | None = None,
) -> None:
    """Validate one MNIST split; raise ValueError naming the offending file.

    ``expected_n`` (if given) is the number of samples the split must have.
    """
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected MNIST images as uint8 of shape (N, 28, 28), "
            f"got {images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected MNIST labels as uint8 of shape (N,), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{labels_path}: {labels.shape[0]} labels, but {images_path} "
            f"has {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0..9, found {int(labels.max())}")
    if expected_n is not None and images.shape[0] != expected_n:
        raise ValueError(
            f"{images_path}: expected {expected_n} samples, found {images.shape[0]} "
            "(incomplete or wrong file?)"
        )


def _not_found_message(
    missing: list[str],
    dirs: list[Path],
    target: Path,
    attempts: dict[str, list[str]] | None,
) -> str:
    lines = ["MNIST files not found: " + ", ".join(missing) + " (plain or .gz)."]
    lines.append("Looked in:")
    for d in dirs:
        lines.append(f"  {d}")
    if attempts is None:
        lines.append("Download was disabled (download=False).")
    else:
        lines.append("Download failed (mirrors tried in order):")
        for filename, failures in attempts.items():
            for failure in failures:
                lines.append(f"  [{filename}] {failure}")
    lines.append(
        "To fix: put the four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, plain or .gz) in a folder 'mnist' "
        "and pass its parent as load_mnist(root=...) (the 'mnist' folder itself works too), "
        f"or set the {_ENV_VAR} environment variable to that parent folder, "
        f"or download them by hand into {target} from one of: " + ", ".join(_MNIST_MIRRORS)
    )
    return "\n".join(lines)


def load_mnist(
    root: PathLike | None = None, download: bool = True
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load the MNIST handwritten digits.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding an ``mnist`` subfolder with the four IDX files
        (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each plain
        or gzipped (``.gz``). For convenience ``root`` may also be the folder
        that holds the files directly. Downloads go to ``root/mnist``.
        If not given, the ``FERROGRAD_DATA`` environment variable is used the
        same way; if that is unset, the user cache
        ``$XDG_CACHE_HOME/ferrograd/mnist`` (default
        ``~/.cache/ferrograd/mnist``).
    download : bool, default True
        Download missing files from public mirrors. Downloads time out, are
        verified against the known SHA-256 of the uncompressed files, and are
        written atomically (temporary file, then rename).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of numpy.ndarray
        ``x_train`` uint8 of shape (60000, 28, 28), ``y_train`` uint8 of
        shape (60000,), ``x_test`` uint8 of shape (10000, 28, 28) and
        ``y_test`` uint8 of shape (10000,). Pixels are 0..255, labels 0..9.

    Raises
    ------
    DatasetNotFoundError
        (a ``FileNotFoundError``) if files are missing and could not be
        downloaded, or ``download=False``. The message lists every folder
        searched, every failed download and how to point ferrograd at the
        files.
    ValueError
        If a file is not valid IDX, or does not hold what MNIST should
        (dtype, shape, label range, 60000/10000 samples). The message names
        the file.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist()  # doctest: +SKIP
    >>> x_train.shape, y_train[:5]  # doctest: +SKIP
    ((60000, 28, 28), array([5, 0, 4, 1, 9], dtype=uint8))
    """
    dirs, target = _search_dirs(root, "mnist")
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for role, filename in _MNIST_FILES.items():
        found = _find_file(dirs, filename)
        if found is None:
            missing.append(filename)
        else:
            paths[role] = found

    if missing:
        if not download:
            raise DatasetNotFoundError(_not_found_message(missing, dirs, target, None))
        attempts: dict[str, list[str]] = {}
        still_missing: list[str] = []
        for filename in missing:
            dest, failures = _download(filename, target, _MNIST_SHA256)
            if dest is None:
                attempts[filename] = failures
                still_missing.append(filename)
        if still_missing:
            raise DatasetNotFoundError(_not_found_message(still_missing, dirs, target, attempts))
        for role, filename in _MNIST_FILES.items():
            if role not in paths:
                found = _find_file([target], filename)
                if found is None:  # pragma: no cover - written just above
                    raise DatasetNotFoundError(f"{target / filename}: vanished after download")
                paths[role] = found

    splits = []
    for split in ("train", "test"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(images_path), read_idx(labels_path)
        _check_split(images, labels, images_path, labels_path, _MNIST_SIZES[split])
        splits.append((images, labels))
    return splits[0], splits[1]
