"""Data-parallel training over MPI: jobs of 2 and 3 ranks on loopback
(tests/dist_worker.py, launched with the venv's mpiexec), compared with
single-process training in this process; faults end the job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ferrograd as fg

pytest.importorskip("mpi4py")
sys.path.insert(0, str(Path(__file__).parent))
import dist_worker as w  # noqa: E402
from conftest import data_root  # noqa: E402

WORKER = str(Path(__file__).parent / "dist_worker.py")
MPIEXEC = Path(sys.executable).parent / "mpiexec"


def launch(
    ranks: int, scenario: str, tmp: Path, timeout: float = 60, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Runs ``scenario`` on ``ranks`` ranks; returns the finished job."""
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (pip install 'ferrograd[mpi]')")
    env = dict(os.environ, FERROGRAD_NUM_THREADS="1", FERROGRAD_DATA=str(data_root()))
    py = [sys.executable, "-m", "mpi4py"] if module else [sys.executable]
    cmd = [str(MPIEXEC), "-n", str(ranks), *py, WORKER, scenario, str(tmp)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_ok(ranks: int, scenario: str, tmp: Path) -> list[dict[str, np.ndarray]]:
    job = launch(ranks, scenario, tmp)
    assert job.returncode == 0, job.stdout + job.stderr
    return [dict(np.load(tmp / f"{scenario}-rank{r}.npz")) for r in range(ranks)]


def close(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    scale = max(float(np.abs(b).max()), 1e-30)
    err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol:.0e} x {scale:.3g}"


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The ``equal`` scenario in this process, without distribution."""
    out: dict[str, np.ndarray] = {}
    x, y = w.toy(41)
    xv, yv = w.toy(17, seed=1)
    for dtype in ("float64", "float32"):
        m = w.mlp(dtype)
        h = m.fit(x, y, "cross_entropy", "adam", epochs=3, batch_size=8, verbose=0,
                  validation_data=(xv, yv))  # fmt: skip
        out[f"mlp_{dtype}"] = w.flat(m)
        out[f"mlp_{dtype}_loss"] = np.array(h["loss"])
        out[f"mlp_{dtype}_val_loss"] = np.array(h["val_loss"])
        out[f"mlp_{dtype}_val_accuracy"] = np.array(h["val_accuracy"])
        out[f"mlp_{dtype}_eval"] = np.array(
            list(m.evaluate(xv, yv, "cross_entropy", batch_size=4).values())
        )
        out[f"mlp_{dtype}_predict"] = m.predict(xv)
    m = w.mlp("float64")
    opt = fg.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    sched = fg.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    loss = fg.losses.CrossEntropy(weight=[0.5, 2.0, 1.0])
    sw = np.linspace(0.5, 1.5, len(x))
    m.fit(x, y, loss, opt, epochs=2, batch_size=7, verbose=0, sample_weight=sw,
          clip_grad_norm=0.5, scheduler=sched, scheduler_interval="step")  # fmt: skip
    out["weighted"] = w.flat(m)
    xi = np.random.default_rng(2).normal(size=(22, 1, 8, 8))
    yi = (xi[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64) + (
        xi[:, 0, 4:, :4].mean(axis=(1, 2)) > 0
    )
    m = w.cnn("float64")
    m.fit(xi, yi, "cross_entropy", "adam", epochs=2, batch_size=5, verbose=0)
    out["cnn"] = w.flat(m)
    (xm, ym), _ = fg.datasets.load_mnist(root=data_root(), download=False)
    m = w.mnist_mlp()
    h = m.fit(xm[:600], ym[:600], "cross_entropy", "adam", epochs=2, batch_size=64, verbose=0)
    out["mnist"] = w.flat(m)
    out["mnist_loss"] = np.array(h["loss"])
    m = w.mlp("float64")
    opt = fg.optim.SGD(m.parameters(), lr=0.1)
    lossf = fg.losses.CrossEntropy()
    for step in range(3):
        xb, yb = x[step * 12 : (step + 1) * 12], y[step * 12 : (step + 1) * 12]
        opt.zero_grad()
        lossf(m.forward(xb, training=True), yb)
        m.backward(lossf.backward())
        opt.step()
    out["step_api"] = w.flat(m)
    return out


@pytest.mark.parametrize("ranks", [2, 3])
def test_fit_equals_one_process(ranks: int, tmp_path: Path, single: dict[str, np.ndarray]) -> None:
    """Distributed fit (MLP, CNN, float64 and float32, class and sample
    weights, clipping, a per-step schedule, real MNIST; 41 samples in
    batches of 8 leave a last batch of 1, smaller than the rank count)
    equals one process to rounding; every rank ends with the same bits,
    and a second run in the job gives them again; the logs, validation,
    evaluate and predict are those of the whole data on every rank; the
    CSV log and the saved model are written once, complete on return."""
    outs = run_ok(ranks, "equal", tmp_path)
    for other in outs[1:]:
        for k, v in outs[0].items():
            assert np.array_equal(other[k], v), f"{k} differs across ranks"
    got = outs[0]
    for key, rtol in [("mlp_float64", 1e-12), ("weighted", 1e-12), ("cnn", 1e-12),
                      ("step_api", 1e-12), ("mlp_float32", 1e-5), ("mnist", 1e-4)]:  # fmt: skip
        close(got[key], single[key], rtol)
    for dtype, rtol in [("float64", 1e-12), ("float32", 1e-5)]:
        for what in ("loss", "val_loss", "val_accuracy", "eval", "predict"):
            close(got[f"mlp_{dtype}_{what}"], single[f"mlp_{dtype}_{what}"], rtol)
        # The user callback ran on every rank with the reduced logs.
        assert np.array_equal(got[f"mlp_{dtype}_record"], got[f"mlp_{dtype}_loss"])
        assert np.array_equal(got[f"mlp_{dtype}_loaded"], got[f"mlp_{dtype}"])
        rows = (tmp_path / f"log-{dtype}.csv").read_text().splitlines()
        assert len(rows) == 4 and rows[0].startswith("epoch,"), rows
    assert np.array_equal(got["mlp_float32_again"], got["mlp_float32"])
    # It learned (the comparisons are not between two untrained models).
    assert got["mnist_loss"][-1] < got["mnist_loss"][0] < 2.5


def test_shard_mode(tmp_path: Path) -> None:
    """Parts of 30 and 37 samples in per-rank batches of 4: each epoch runs
    the smaller part's 8 steps; both ranks hold the same weights; the
    validation metrics are those of the union of the ranks' parts."""
    outs = run_ok(2, "shard", tmp_path)
    assert np.array_equal(outs[0]["params"], outs[1]["params"])
    assert int(outs[0]["steps"]) == 8
    for k in ("loss", "val_loss", "val_accuracy"):
        assert np.array_equal(outs[0][k], outs[1][k])
    # The union's validation metrics, from the final weights in one process.
    m = w.mlp("float64")
    names = list(m.state_dict())
    sizes = [v.size for v in m.state_dict().values()]
    parts = np.split(outs[0]["params"], np.cumsum(sizes)[:-1])
    m.load_state_dict(
        {n: p.reshape(v.shape) for n, p, v in zip(names, parts, m.state_dict().values())}
    )
    xv = np.concatenate([w.toy(5, seed=20)[0], w.toy(8, seed=21)[0]])
    yv = np.concatenate([w.toy(5, seed=20)[1], w.toy(8, seed=21)[1]])
    ev = m.evaluate(xv, yv, "cross_entropy")
    close(outs[0]["val_loss"][-1:], np.array([ev["loss"]]), 1e-12)
    close(outs[0]["val_accuracy"][-1:], np.array([ev["accuracy"]]), 1e-12)
    assert outs[0]["loss"][-1] < outs[0]["loss"][0]


def test_resume_with_another_rank_count(tmp_path: Path) -> None:
    """A checkpoint of a 2-rank run resumes on 1 and on 3 ranks, giving the
    weights of an uninterrupted single-process run."""
    x, y = w.toy(41)
    m = w.mlp("float64")
    opt = fg.optim.Adam(m.parameters(), lr=0.01)
    m.fit(x, y, "cross_entropy", opt, epochs=4, batch_size=8, verbose=0)
    saved = run_ok(2, "resume_save", tmp_path)
    for ranks in (1, 3):
        outs = run_ok(ranks, "resume_load", tmp_path)
        for o in outs:
            close(o["params"], w.flat(m), 1e-12)
    assert not np.array_equal(saved[0]["params"], outs[0]["params"])


@pytest.mark.parametrize(
    "scenario, words",
    [
        ("mismatch_settings", ["mismatch", "batch_size", "epochs", "rank 1: 4"]),
        ("mismatch_shapes", ["mismatch", "parameter count", "parameter shapes"]),
    ],
)
def test_mismatch_is_named(scenario: str, words: list[str], tmp_path: Path) -> None:
    """Ranks that disagree on the model or the settings fail before the
    first step, naming what differs, and the job ends."""
    job = launch(2, scenario, tmp_path, timeout=60)
    assert job.returncode != 0
    for word in words:
        assert word in job.stderr, job.stderr


@pytest.mark.parametrize("module", [False, True], ids=["python", "python-m-mpi4py"])
def test_exception_on_one_rank_ends_the_job(module: bool, tmp_path: Path) -> None:
    """A callback raising on rank 1 ends the job (rank 0 would otherwise
    wait in the next all-reduce forever), with the original error."""
    job = launch(2, "raises", tmp_path, timeout=60, module=module)
    assert job.returncode != 0
    assert "callback failed on purpose" in job.stderr, job.stderr


def test_killed_rank_ends_the_job(tmp_path: Path) -> None:
    """SIGKILL of rank 1 ends the job (mpiexec's hydra notices)."""
    job = launch(2, "killed", tmp_path, timeout=60)
    assert job.returncode != 0


def test_import_needs_no_mpi() -> None:
    """``import ferrograd`` does not import mpi4py; without it,
    ``ferrograd.distributed`` raises ImportError naming the extra."""
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import ferrograd\n"
        "assert 'mpi4py' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n"
        "    from ferrograd import distributed\n"
        "except ImportError as e:\n"
        "    assert 'ferrograd[mpi]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_cli_distributed(tmp_path: Path) -> None:
    """``mpiexec -n 2 ferrograd mnist --distributed``: rank 0 prints and saves."""
    if not MPIEXEC.exists():
        pytest.skip("no mpiexec in the venv")
    cli = Path(sys.executable).parent / "ferrograd"
    out = tmp_path / "w.npz"
    cmd = [str(MPIEXEC), "-n", "2", str(cli), "mnist", "--distributed", "--epochs", "1",
           "--hidden", "16", "--data", str(data_root()), "--no-download", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, FERROGRAD_NUM_THREADS="1")
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("test accuracy:") == 1 and "ranks: 2" in job.stdout
    acc = float(job.stdout.split("test accuracy: ")[1].split()[0])
    assert acc > 0.85 and out.exists()
