"""The built wheel, as a user gets it: its name and contents, then installed
into a fresh virtual environment with no Rust toolchain on PATH, imported
from there (not from this source tree) and used to train a small model.

The wheel is $FERROGRAD_WHEEL, else the newest ``dist/ferrograd-*.whl``
(``make wheel``; ``make test`` builds it before pytest runs). Without one the
tests skip, except under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 2_000_000  # "under 2 MB"

TRAIN = textwrap.dedent(
    """
    import os
    import sys

    import numpy as np

    import ferrograd as fg
    from ferrograd import _core
    from ferrograd import layers as L

    venv = os.path.realpath(sys.argv[1])
    for mod in (fg, _core):
        where = os.path.realpath(mod.__file__)
        assert where.startswith(venv + os.sep), f"{mod.__name__} imported from {where}"

    # Inside or outside a circle: not linearly separable, about half each.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 2)).astype(np.float32)
    y = (np.hypot(x[:, 0], x[:, 1]) > 1.1774).astype(np.int64)
    model = fg.Sequential([L.Dense(2, 32), L.ReLU(), L.Dense(32, 2)], seed=0)
    model.fit(x[:1000], y[:1000], "cross_entropy", "adam", epochs=30, batch_size=32, verbose=0)
    acc = model.evaluate(x[1000:], y[1000:], "cross_entropy")["accuracy"]
    assert acc > 0.9, acc
    print("ok", fg.__file__, acc)
    """
)


def _wheel() -> Path:
    env = os.environ.get("FERROGRAD_WHEEL")
    if env:
        path = Path(env)
        assert path.is_file(), f"$FERROGRAD_WHEEL={env} is not a file"
        return path
    wheels = sorted((REPO / "dist").glob("ferrograd-*.whl"), key=lambda p: p.stat().st_mtime)
    if wheels:
        return wheels[-1]
    reason = "no wheel: run `make wheel` (or set $FERROGRAD_WHEEL)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI the wheel tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def wheel() -> Path:
    return _wheel()


def test_wheel_name_size_and_contents(wheel: Path) -> None:
    name, version, py_tag, abi_tag, platform_tag = wheel.name[: -len(".whl")].split("-")
    assert name == "ferrograd"
    assert (py_tag, abi_tag) == ("cp39", "abi3"), wheel.name
    # manylinux_X_Y_arch, or a legacy alias (manylinux2014_arch); never linux_arch.
    assert platform_tag.startswith("manylinux"), wheel.name

    size = wheel.stat().st_size
    assert size < MAX_BYTES, f"{wheel.name} is {size:,} bytes"

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = f"ferrograd-{version}.dist-info/"
        meta = zf.read(info + "WHEEL").decode()
    for plat in platform_tag.split("."):  # a compressed tag set: one Tag line each
        assert plat.startswith("manylinux"), wheel.name
        assert f"Tag: {py_tag}-{abi_tag}-{plat}" in meta, meta
    assert "Root-Is-Purelib: false" in meta, meta
    # Only the package and its metadata: no tests, no .venv, no sources.
    stray = [n for n in names if not n.startswith(("ferrograd/", info))]
    assert not stray, stray
    assert [n for n in names if n.endswith(".so")] == ["ferrograd/_core.abi3.so"], names
    for needed in ("__init__.py", "_core.pyi", "py.typed", "cli.py"):
        assert f"ferrograd/{needed}" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("ferrograd/test")], names


def _pythons() -> list:
    """This interpreter, and Python 3.9 (the abi3 floor) when one runs here."""
    params = [pytest.param(sys.executable, id="this-python")]
    py39 = shutil.which("python3.9")
    runs = False
    if py39:
        probe = subprocess.run([py39, "-c", "import venv"], capture_output=True)
        runs = probe.returncode == 0
    params.append(
        pytest.param(
            py39,
            id="python3.9",
            marks=pytest.mark.skipif(not runs, reason="no working python3.9 on PATH"),
        )
    )
    return params


def _path_without_rust() -> str:
    """$PATH minus every folder holding cargo, rustc or rustup."""
    keep = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, t)) for t in ("cargo", "rustc", "rustup"))
    ]
    return os.pathsep.join(keep)


@pytest.mark.parametrize("python", _pythons())
def test_wheel_installs_and_trains_without_rust(wheel: Path, python: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    bindir = venv / "bin"
    path = os.pathsep.join([str(bindir), _path_without_rust()])
    for tool in ("cargo", "rustc", "rustup"):
        assert shutil.which(tool, path=path) is None, f"{tool} still on PATH"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CARGO", "RUSTUP"))}
    env.update(PATH=path, VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
    work = tmp_path / "work"  # cwd far from the source tree
    work.mkdir()

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    # A binary wheel only: pip must not fall back to building anything.
    run(str(bindir / "python"), "-m", "pip", "install", "-q", "--only-binary", ":all:", str(wheel))
    (work / "train.py").write_text(TRAIN)
    out = run(str(bindir / "python"), "train.py", str(venv))
    assert out.startswith("ok "), out
    assert "usage" in run(str(bindir / "ferrograd"), "--help")  # the console script
