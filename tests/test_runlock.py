"""One writer per run directory (``runlock.py``): a second writer is refused in one line naming
the holder, and without the lock it would get in (the negative control); a lock left by a dead
process never blocks; commands that read a run take no lock; under torchrun the other ranks stop
with rank 0 instead of waiting at a collective. With real processes: two ``pyro-vae train`` on
one run, and a torchrun whose launcher was killed while its workers kept training.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
from conftest import assert_one_line_error

import pyro_vae.runs.lock as runlock
from pyro_vae import TrainConfig, VAEConfig, train
from pyro_vae.cli.main import main
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.lock import LOCK_NAME, RunInUseError, run_lock
from pyro_vae.runtime.distributed import World

HOST = socket.gethostname()
QUIET = {"progress": False, "log": lambda s: None}
TINY = VAEConfig(z_dim=2, hidden_dims=(16,))
# A process that takes the lock as pyro-vae does (without importing torch: it starts at once).
HOLD = (
    "import fcntl, json, os, socket, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode())\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


def in_use(run: Path, pid: int) -> str:
    return (
        f"{run} is in use by another pyro-vae run (pid {pid} on host {HOST}); wait for it to "
        "finish or stop it"
    )


def holder_pid(run: Path) -> int:
    return json.loads((run / LOCK_NAME).read_text())["pid"]


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_goes_with_it(tmp_path):
    run = tmp_path / "runs" / "a"
    with run_lock(run) as path:
        assert json.loads(path.read_text()) == {"pid": os.getpid(), "host": HOST}
        with pytest.raises(RunInUseError) as refused, run_lock(run):
            pass
        assert str(refused.value) == in_use(run, os.getpid())
        link = tmp_path / "link"
        link.symlink_to(run)
        with (
            pytest.raises(RunInUseError, match="is in use by another pyro-vae run"),
            run_lock(link),
        ):
            pass
    # The folders were made for the lock and nothing was written there: they are gone again.
    assert not (tmp_path / "runs").exists()
    with run_lock(run):
        (run / "config.json").write_text("{}")
    assert os.listdir(run) == ["config.json"]  # what the run wrote stays; the lock file goes
    with run_lock(run):  # and the run is free for the next writer
        pass


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # The text a crashed run leaves is only text: the pid of a process that has exited.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": HOST, "extra": "x" * 50}))
    with run_lock(run):
        assert json.loads((run / LOCK_NAME).read_text()) == {"pid": os.getpid(), "host": HOST}
    # A process that holds the lock blocks it; killed, it leaves its text and no lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run / LOCK_NAME)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunInUseError, match=f"pid {holder.pid} on host"), run_lock(run):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert holder_pid(run) == holder.pid
    with run_lock(run):
        assert holder_pid(run) == os.getpid()


def _second_writer_refused(run: Path, mnist_dir: Path) -> bool:
    """Whether train() into ``run`` is refused while this process holds the run's lock (as
    another writer would), with nothing written."""
    config = TrainConfig(
        data_dir=str(mnist_dir), out=str(run), epochs=1, train_subset=64, test_subset=32,
        device="cpu", step="eager",
    )  # fmt: skip
    with run_lock(run):
        try:
            train(TINY, config, write_figures=False, **QUIET)
        except RunInUseError as e:
            assert str(e) == in_use(run, os.getpid())
            assert os.listdir(run) == [LOCK_NAME]
            return True
    return False


@pytest.mark.mnist
@pytest.mark.parametrize("lock", ["flock", "no-op"])
def test_train_refuses_a_held_run_and_without_the_lock_a_second_writer_gets_in(
    lock, mnist_dir, tmp_path, monkeypatch
):
    if lock == "no-op":  # the negative control: train's lock does nothing (the first's is real)
        monkeypatch.setattr(runlock, "run_lock", lambda run_dir: nullcontext())
    assert _second_writer_refused(tmp_path / "run", mnist_dir) == (lock == "flock")


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lock") / "run"
    config = TrainConfig(
        data_dir=str(mnist_dir), out=str(run), epochs=1, train_subset=200, test_subset=50,
        device="cpu", step="eager",
    )  # fmt: skip
    train(TINY, config, write_figures=False, **QUIET)
    return run


@pytest.mark.mnist
def test_commands_that_read_a_run_take_no_lock(trained, mnist_dir, capsys):
    common = ["--device", "cpu", "--data-dir", str(mnist_dir)]
    with run_lock(trained):  # a training run holds it
        resume = ["train", "--out", str(trained), "--resume", "--epochs", "2", "--no-progress"]
        assert_one_line_error(main(resume + common), capsys.readouterr().err, "is in use")
        evaluate = ["evaluate", str(trained), "--elbo", "trace", "--test-subset", "50"]
        assert main(evaluate + common) == 0
        assert main(["sample", str(trained), "--num", "4", "--device", "cpu"]) == 0
        grid = ["--test-subset", "50", "--grid-size", "3"]
        assert main(["plot", str(trained), *grid, *common]) == 0
        assert holder_pid(trained) == os.getpid()  # untouched by the readers
    assert json.loads((trained / "eval.json").read_text())["epoch"] == 1
    assert not list(trained.glob("*.tmp"))  # eval.json replaced whole


def _rank(rank: int, port: int, run: str, mnist_dir: str, results) -> None:
    """One rank of a 2-process gloo world calling train(), as under torchrun."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=20))
    config = TrainConfig(
        data_dir=mnist_dir, out=run, epochs=1, train_subset=64, test_subset=32, device="cpu",
        step="eager",
    )  # fmt: skip
    try:
        train(TINY, config, world=World(rank=rank, size=2), write_figures=False, **QUIET)
        results.put((rank, "trained"))
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.mnist
@pytest.mark.multiprocess
@pytest.mark.parametrize("told", ["broadcast", "not told"])
def test_the_other_ranks_stop_when_rank_zero_cannot_lock(told, mnist_dir, tmp_path, monkeypatch):
    """Rank 0 is refused; rank 1 gets its error at once, from the broadcast that is the group's
    first collective. Not told (the negative control), rank 1 trains on into a collective rank
    0 never joins."""
    if told == "not told":
        monkeypatch.setattr(World, "broadcast_object", lambda self, obj: obj)
    run = tmp_path / "run"
    ctx = multiprocessing.get_context("fork")  # torch is imported already: starts at once
    results = ctx.Queue()
    with run_lock(run):
        args = (_free_port(), str(run), str(mnist_dir), results)
        procs = [ctx.Process(target=_rank, args=(rank, *args)) for rank in range(2)]
        with warnings.catch_warnings():  # Python 3.12+: fork of a threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            for p in procs:
                p.start()
        try:
            outcome = {}
            for _ in range(2):
                try:
                    outcome.update([results.get(timeout=60 if told == "broadcast" else 30)])
                except queue.Empty:  # not told, rank 1 may hang in that collective instead
                    if told == "broadcast":
                        raise
                    outcome.setdefault(1, "hung in a collective rank 0 never joined")
                    break
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    refused = f"RunInUseError: {in_use(run, os.getpid())}"
    assert outcome[0] == refused
    if told == "broadcast":
        assert outcome[1] == refused
    else:  # rank 1 went on to the first collective of training, which rank 0 never joined:
        # it fails there (gloo's timeout) or hangs, but is never told why
        assert outcome[1] != refused
        assert outcome[1].startswith(("RuntimeError: ", "hung")), outcome[1]


# ---------------------------------------------------------------- real processes


def _tiny_run(mnist_dir: Path, run: Path) -> list[str]:
    return [
        "train", "--data-dir", str(mnist_dir), "--out", str(run), "--device", "cpu",
        "--train-subset", "256", "--test-subset", "100", "--z-dim", "2", "--hidden-dims", "16",
        "--step", "eager", "--no-progress",
    ]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}


def _start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A long run at the lowest priority, so the commands tried beside it start quickly."""
    with open(log, "w") as out:
        return subprocess.Popen(
            ["nice", "-n", "19", *cmd], stdout=out, stderr=subprocess.STDOUT, env=ENV, **kwargs
        )


def _pyro_vae(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pyro_vae", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)


def _epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["epoch"] for line in text.splitlines() if line.endswith("}")]


def _wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command's name: state, parent pid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """Running: any of its threads (a killed process's leader turns zombie while its other
    threads still exit, holding its files and locks; a zombie whose threads are all gone holds
    none)."""
    try:
        tasks = [t.name for t in Path(f"/proc/{pid}/task").iterdir()]
    except FileNotFoundError:
        return False
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def _children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int(_stat(d.name)[1]) == pid:
                found.append(int(d.name))
        except FileNotFoundError:  # it ended meanwhile
            continue
    return found


@pytest.mark.mnist
@pytest.mark.multiprocess
def test_a_second_train_process_is_refused_and_the_first_trains_on(mnist_dir, tmp_path):
    run = tmp_path / "run"
    first = _start(
        [sys.executable, "-m", "pyro_vae", *_tiny_run(mnist_dir, run), "--epochs", "100000"],
        tmp_path / "first.log",
    )
    try:
        _wait_for(lambda: len(_epochs(run)) >= 1, "the first run's first epoch")
        config = (run / "config.json").read_bytes()
        second = _pyro_vae(*_tiny_run(mnist_dir, run), "--resume", "--epochs", "3")
        assert_one_line_error(second.returncode, second.stderr, in_use(run, first.pid))
        assert first.poll() is None  # still training
        done = len(_epochs(run))
        _wait_for(lambda: len(_epochs(run)) > done + 1, "the first run's next epochs", 60)
    finally:
        first.kill()
        first.wait()
    # The first run is unharmed: its settings, and one row per epoch in order.
    epochs = _epochs(run)
    assert (run / "config.json").read_bytes() == config
    assert epochs == list(range(1, len(epochs) + 1))
    assert load_checkpoint(run)["epoch"] in (len(epochs), len(epochs) - 1)


@pytest.mark.mnist
@pytest.mark.multiprocess
def test_orphaned_torchrun_workers_hold_the_run_until_they_die(mnist_dir, tmp_path, capsys):
    """torchrun starts its workers in sessions of their own: SIGKILL to the launcher's process
    group leaves them training. While they live, a resume is refused; once they are killed,
    the lock they leave is no lock, and the resumed run has one row per epoch, in order. (The
    resumes run in this process: the real second process is the test above's.)"""
    run = tmp_path / "run"
    launcher = _start(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "pyro_vae", *_tiny_run(mnist_dir, run), "--epochs", "100000"],
        tmp_path / "torchrun.log",
        start_new_session=True,
    )  # fmt: skip
    workers: list[int] = []
    try:
        _wait_for(lambda: len(_epochs(run)) >= 1, "the first epoch under torchrun")
        workers = _children(launcher.pid)
        assert len(workers) == 2
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        done = len(_epochs(run))
        _wait_for(lambda: len(_epochs(run)) > done + 1, "the orphans' next epochs", 60)
        assert all(_alive(pid) for pid in workers)  # the orphans train on, and write
        assert holder_pid(run) in workers  # rank 0's
        code = main([*_tiny_run(mnist_dir, run), "--resume", "--epochs", "3"])
        assert_one_line_error(code, capsys.readouterr().err, in_use(run, holder_pid(run)))
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to die", 30)
    assert holder_pid(run) in workers  # the dead rank 0's text is left, and blocks nothing
    epoch = load_checkpoint(run)["epoch"]
    assert main([*_tiny_run(mnist_dir, run), "--resume", "--epochs", str(epoch + 2)]) == 0
    assert _epochs(run) == list(range(1, epoch + 3))
    assert not (run / LOCK_NAME).exists()
