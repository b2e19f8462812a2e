"""Run folders: nothing lost, nothing silent.

- a folder that holds a run is never replaced without ``--force``; with it, the old run stays until the
  new one has a checkpoint, and comes back if it never gets one (a crash here, SIGKILL: at the next start);
- ``--resume`` with a spec that changes the model / data / training is refused before anything is
  written, each key listed; the documented keys may change;
- a second process writing the same folder gets an error naming the first one's PID (a real lock);
- files follow the umask; the temporary files of a killed save go at the next save or resume;
- the command line: user errors exit 2 in one paragraph (``-v``: the traceback), Ctrl-C / SIGTERM say
  where training stopped and how to resume, a full disk names the file and keeps the last checkpoint,
  a read-only folder is a clear error, trainer keys are checked against Lightning's;
- ``last.ckpt`` ends every epoch even with ``checkpoint_every_n_steps``; a sharded (DDP) epoch order
  resumes where it stopped.

Tiny runs: the conv encoder [4, 8] on 8x8 digits (19 steps an epoch), in this process.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from conftest import tiny_run_spec

UMASK = 0o027  # the fixture's run is written under it: files 0o640


def _spec(**train) -> dict:
    spec = tiny_run_spec(epochs=1, **train)
    spec["model"]["encoder"]["channels"] = [4, 8]
    return spec


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (recursively) and its bytes, the lock file (and the list of names of
    a run moved aside) left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".edh.lock", ".names.json")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run (step checkpoints every 4 steps), written under umask 027."""
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    root = tmp_path_factory.mktemp("runs")
    old = os.umask(UMASK)
    try:
        train_run(parse_run_spec(_spec(checkpoint_every_n_steps=4)), root / "run")
    finally:
        os.umask(old)
    return root / "run"


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run to change."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _with_callback(monkeypatch, callback):
    """Make every trainer `train_run` builds carry ``callback`` too."""
    from edh.train import runner

    make_trainer = runner.make_trainer
    monkeypatch.setattr(runner, "make_trainer", lambda spec, run_dir, callbacks=None, **options: make_trainer(
        spec, run_dir, [*(callbacks or []), callback], **options))


# ---- 1. a folder that holds a run -------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [True, False], ids=["with-last.ckpt", "weights-only"])
def test_train_never_replaces_a_run_without_force(run, tmp_path, cli, capsys, checkpoint):
    from edh.core.errors import RunExistsError
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    if not checkpoint:
        (run / "last.ckpt").unlink()
    before = _snapshot(run)
    other = _spec()
    other["model"]["encoder"]["channels"] = [8, 16]
    assert cli(["train", str(_write(tmp_path / "other.yaml", other)), "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("edh train: error: ") and "Traceback" not in error
    assert f"{run} already holds a run" in error and "model.safetensors" in error and "metrics.csv" in error
    assert "nothing in it was changed" in error and "--force" in error and "--out NEW_FOLDER" in error
    assert (f"edh train --resume {run}" in error) == checkpoint and ("cannot be resumed" in error) != checkpoint
    with pytest.raises(RunExistsError):  # the Python API too
        train_run(parse_run_spec(other), run)
    assert cli(["finetune", str(run), "--out", str(run)]) == 2  # and edh finetune --out
    assert "already holds a run" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run, tmp_path, cli, monkeypatch):
    old = _snapshot(run)
    seen = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.global_step, (
                (run / ".previous").is_dir() and _snapshot(run / ".previous") == old,
                (run / "model.safetensors").exists()))

    _with_callback(monkeypatch, Watch())
    other = _spec(checkpoint_every_n_steps=2, seed=1)
    assert cli(["train", str(_write(tmp_path / "other.yaml", other)), "--out", str(run), "--force",
                "--max-steps", "4"]) == 0
    assert seen[0] == (True, False) and seen[1] == (True, False)  # the old run whole, aside, until step 2 ...
    assert seen[2] == (False, False) and seen[3] == (False, False)  # ... whose checkpoint replaced it
    assert not (run / ".previous").exists() and not (run / ".previous.delete").exists()
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 4
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["seed"] == 1


class _Crash(RuntimeError):
    pass


def test_a_force_start_without_a_checkpoint_puts_the_old_run_back(run, tmp_path, cli, capsys, monkeypatch):
    from edh.core.spec import parse_run_spec
    from edh.train import runner

    old = _snapshot(run)

    class CrashAtStep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                raise _Crash("simulated crash")

    _with_callback(monkeypatch, CrashAtStep())
    other = parse_run_spec(_spec(seed=1))
    with pytest.raises(_Crash):  # a crash (or Ctrl-C, a full disk) before the new run's first checkpoint
        runner.train_run(other, run, force=True)
    assert _snapshot(run) == old and not (run / ".previous").exists()
    # SIGKILLed instead: nothing put the old run back; the folder says where it is, the next start restores it
    monkeypatch.setattr(runner, "restore_previous", lambda *args, **kwargs: False)
    with pytest.raises(_Crash):
        runner.train_run(other, run, force=True)
    assert (run / ".previous").is_dir() and "model.safetensors" not in os.listdir(run)
    assert cli(["eval", str(run)]) == 2
    assert f"`edh train --resume {run}` puts that run back" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli(["train", "--resume", str(run), "--epochs", "2", "--max-steps", "20"]) == 0
    assert not (run / ".previous").exists()
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["seed"] == 0  # the old run, resumed
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 20
    assert (run / "metrics.csv").read_bytes() == old["metrics.csv"]


def test_moving_a_run_aside_and_back_survives_a_kill_at_any_point(tmp_path, monkeypatch):
    from edh.workflows import run as run_module

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("spec.yaml", "data.json", "model.safetensors", "metrics.csv", "last.ckpt", "notes.txt"):
        (folder / name).write_text(f"old {name}")
    old = _snapshot(folder)
    # killed while moving the old run aside: half of it in .previous.partial
    run_module.stage_previous(folder)
    os.rename(folder / ".previous", folder / ".previous.partial")
    for name in ("spec.yaml", "data.json"):
        os.rename(folder / ".previous.partial" / name, folder / name)
    assert "while it moved the old run aside" in run_module.recover_interrupted_start(folder)
    assert _snapshot(folder) == old and sorted(os.listdir(folder)) == sorted(old)
    # killed while putting it back: the next recovery finishes the job, losing nothing
    run_module.stage_previous(folder)
    assert sorted(os.listdir(folder)) == [".previous", "notes.txt"]  # a file edh did not write stays
    for name in ("spec.yaml", "model.safetensors", "curves.png"):
        (folder / name).write_text(f"new {name}")  # what the new run wrote before it was stopped
    replace, calls = os.replace, []

    def killed_after_two(source, target):
        calls.append(source)
        if len(calls) > 2:
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(run_module.os, "replace", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_module.restore_previous(folder)
    monkeypatch.setattr(run_module.os, "replace", replace)
    assert run_module.recover_interrupted_start(folder)
    assert _snapshot(folder) == old and not (folder / ".previous").exists()


# ---- 2. resuming with another spec ------------------------------------------------------------------
def test_resume_with_a_changed_spec_is_refused_before_anything_is_written(run, tmp_path, cli, capsys):
    before = _snapshot(run)
    changed = _spec(checkpoint_every_n_steps=4)
    changed["model"]["encoder"]["channels"] = [8, 16]
    changed["data"]["batch_size"] = 32
    changed["train"]["lr"] = 0.1
    assert cli(["train", str(_write(tmp_path / "changed.yaml", changed)), "--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert "size mismatch" not in error and "Traceback" not in error
    assert f"cannot resume {run} with {tmp_path / 'changed.yaml'}" in error and "3 keys; nothing was written" in error
    assert "model.encoder.channels: [4, 8] in the run, [8, 16] in" in error
    assert "data.batch_size: 64 in the run, 32 in" in error and "train.lr: 0.01 in the run, 0.1 in" in error
    assert "train.epochs" in error and "trainer.devices" in error  # what may change
    assert _snapshot(run) == before


def test_resume_may_change_the_documented_keys(run, tmp_path, cli):
    from edh.core.spec import parse_run_spec
    from edh.workflows.run import RESUME_MAY_CHANGE, read_run_spec, resume_differences

    saved, _ = read_run_spec(run)
    assert {"train.epochs", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "data.num_workers",
            "trainer.enable_progress_bar"} <= set(RESUME_MAY_CHANGE)
    data = yaml.safe_load((run / "spec.yaml").read_text())
    data["train"].update(epochs=5, checkpoint_every_n_steps=7, compile=True)
    data["data"]["num_workers"] = 2
    data["trainer"].update(accelerator="gpu", devices=4, num_nodes=2, strategy="ddp", enable_progress_bar=True,
                           log_every_n_steps=1)
    data["edh_version"] = "0.0.1"
    assert resume_differences(saved, parse_run_spec(data)) == []
    data["train"]["weight_decay"] = 0.5
    assert resume_differences(saved, parse_run_spec(data)) == [("train.weight_decay", 0.01, 0.5)]
    # a real resume: more epochs, another logging cadence, the spec file given again
    changed = yaml.safe_load((run / "spec.yaml").read_text())
    changed["train"]["epochs"] = 2
    changed["trainer"]["log_every_n_steps"] = 5
    assert cli(["train", str(_write(tmp_path / "more.yaml", changed)), "--resume", str(run),
                "--max-steps", "20"]) == 0
    written = yaml.safe_load((run / "spec.yaml").read_text())
    assert written["train"]["epochs"] == 2 and written["trainer"]["log_every_n_steps"] == 5
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 20


# ---- 3. two processes, one folder -------------------------------------------------------------------
HOLDER = ("import sys, time\nfrom edh.utils.io import FolderLock\n"
          "FolderLock(sys.argv[1], 'run folder').acquire()\nprint('locked', flush=True)\ntime.sleep(120)\n")


def test_a_second_process_cannot_write_a_run_folder_in_use(run, tmp_path, cli, capsys):
    from edh.utils.io import FolderLock

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        for argv in (["train", "--resume", str(run)],
                     ["train", str(_write(tmp_path / "other.yaml", _spec())), "--out", str(run), "--force"]):
            assert cli(argv) == 2
            error = capsys.readouterr().err
            assert f"the run folder {run} is in use" in error and f"PID {holder.pid}" in error, error
            assert f"kill {holder.pid}" in error and "another folder" in error
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(run) as lock:  # the kernel released the killed holder's lock
        assert lock.held


# ---- 4. permissions, temporary files ----------------------------------------------------------------
def test_run_folder_files_follow_the_umask(trained, tmp_path):
    from edh.utils.io import atomic_write_text, save_tensors, torch_save

    modes = {p.name: p.stat().st_mode & 0o777 for p in trained.iterdir() if p.is_file()}
    assert {"model.safetensors", "last.ckpt", "spec.yaml", "data.json", "metrics.csv", "curves.png",
            ".edh.lock"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~UMASK}, modes
    for mask in (0o022, 0o077, 0o002):
        old = os.umask(mask)
        try:
            paths = [atomic_write_text(tmp_path / f"a{mask}.txt", "x"), torch_save(tmp_path / f"b{mask}.ckpt", {}),
                     save_tensors(tmp_path / f"c{mask}.safetensors", {"w": torch.zeros(2)})]
        finally:
            os.umask(old)
        assert [p.stat().st_mode & 0o777 for p in paths] == [0o666 & ~mask] * 3


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temp_files_of_a_killed_save_go_at_the_next_save_and_resume(run, cli):
    from edh.utils.io import _host, load_tensors, save_tensors

    dead, alive, host = _dead_pid(), os.getppid(), _host()
    stale_weights = run / f".model.safetensors.{dead}@{host}.abcdefgh.tmp"
    stale_ckpt = run / f".last.ckpt.{dead}@{host}.abcdefgh.tmp"
    legacy = run / ".metrics.csv.k2j4_x9q.tmp"  # named by an edh before writers were named
    live = run / f".model.safetensors.{alive}@{host}.zzzzzzzz.tmp"  # a save still being written
    remote = run / f".model.safetensors.{dead}@elsewhere.abcdefgh.tmp"  # another machine's (a shared folder)
    for path in (stale_weights, stale_ckpt, legacy, live, remote):
        path.write_bytes(b"half a file")
    save_tensors(run / "model.safetensors", load_tensors(run / "model.safetensors"))  # the next save of it
    assert not stale_weights.exists() and stale_ckpt.exists() and legacy.exists() and live.exists()
    assert cli(["train", "--resume", str(run), "--epochs", "2", "--max-steps", "20"]) == 0  # a resume
    assert not stale_ckpt.exists() and not legacy.exists() and live.exists() and remote.exists()
    assert sorted(p.name for p in run.glob(".*.tmp")) == sorted([live.name, remote.name])


# ---- 5. the command line ----------------------------------------------------------------------------
def test_user_errors_exit_2_in_one_paragraph_and_v_adds_the_traceback(tmp_path, cli, capsys):
    from edh.cli import user_message

    assert cli(["train", str(tmp_path / "nope.yaml")]) == 2
    error = capsys.readouterr().err
    assert error == f"edh train: error: spec file {tmp_path / 'nope.yaml'} does not exist\n"
    assert cli(["-v", "train", str(tmp_path / "nope.yaml")]) == 2
    error = capsys.readouterr().err
    assert "Traceback (most recent call last)" in error and error.endswith("does not exist\n")
    assert cli(["train", "--resume", str(tmp_path), "--force"]) == 2  # an EdhError from the command itself
    assert "give one of them" in capsys.readouterr().err
    message = user_message(OSError(errno.EROFS, "Read-only file system", "/data/run/last.ckpt"))
    assert message == "Read-only file system: /data/run/last.ckpt (the file system is read-only: write somewhere else)"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_where_it_stopped_and_how_to_resume(tmp_path, cli, capsys, monkeypatch, how):
    class Stop(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 6 and how == "ctrl-c":
                raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 6 and how == "sigterm":
                trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets

    _with_callback(monkeypatch, Stop())
    run, handler = tmp_path / "run", signal.getsignal(signal.SIGINT)
    spec = _write(tmp_path / "spec.yaml", _spec(checkpoint_every_n_steps=4))
    code = cli(["train", str(spec), "--out", str(run)])
    error = capsys.readouterr().err
    assert code == {"ctrl-c": 130, "sigterm": 143}[how], error
    assert f"stopped by {'Ctrl-C' if how == 'ctrl-c' else 'SIGTERM'} at epoch 0, step 6" in error
    assert f"its last checkpoint is {run / 'last.ckpt'} (epoch 0, step 4)" in error
    assert f"resume it with `edh train --resume {run}`" in error and "Traceback" not in error
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN undone
    monkeypatch.undo()
    assert cli(["train", "--resume", str(run), "--max-steps", "8"]) == 0
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path, cli, capsys, monkeypatch):
    from edh.train import checkpoint_io
    from edh.utils.io import atomic_write, torch_save

    saves = []

    def disk_fills_up(path, checkpoint):
        saves.append(path)
        if len(saves) == 1:
            return torch_save(path, checkpoint)

        def write(handle):
            handle.write(b"\0" * 1000)  # part of it, then the device is full
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, write)

    monkeypatch.setattr(checkpoint_io, "torch_save", disk_fills_up)
    run = tmp_path / "run"
    spec = _write(tmp_path / "spec.yaml", _spec(checkpoint_every_n_steps=2))
    assert cli(["train", str(spec), "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert f"no space left on the device while saving {run / 'last.ckpt'}" in error
    assert "the previous last.ckpt is intact and the partial write was removed" in error
    assert f"resume it with `edh train --resume {run}` once there is space" in error and "Traceback" not in error
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not list(run.glob(".*.tmp"))
    with pytest.raises(OSError, match="new.bin was not written"):  # a file that had no previous copy
        atomic_write(tmp_path / "new.bin", lambda handle: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))


def test_resuming_a_read_only_run_folder_is_a_clear_error(run, cli, capsys, monkeypatch):
    from edh.workflows import run as run_module

    before = _snapshot(run)
    if os.geteuid() == 0:  # root writes anywhere: say the folder is read-only, as it is for a user
        monkeypatch.setattr(run_module, "write_problem", lambda path: "it is read-only for this user")
    os.chmod(run, 0o555)
    try:
        assert cli(["train", "--resume", str(run)]) == 2
    finally:
        os.chmod(run, 0o755)
    error = capsys.readouterr().err
    assert f"cannot resume {run}: the folder is not writable (it is read-only for this user)" in error
    assert f"chmod -R u+w {run}" in error and f"cp -r {run} NEW_FOLDER" in error and "Traceback" not in error
    assert _snapshot(run) == before


@pytest.mark.parametrize("trainer, train, expected", [
    ({"bogus_key": 1}, {}, r"trainer\.bogus_key: not an option of lightning\.Trainer"),
    ({"max_epoch": 3}, {}, r"trainer\.max_epoch: .*did you mean max_epochs"),
    ({"enable_checkpointing": False}, {}, r"trainer\.enable_checkpointing: false is not possible: edh keeps"),
    ({"callbacks": []}, {}, r"trainer\.callbacks: set by edh"),
    ({"devices": 0}, {}, r"Lightning refused the trainer options .*devices"),
    ({}, {"checkpoint_every_n_steps": -1}, r"train\.checkpoint_every_n_steps"),
], ids=["unknown", "close-match", "no-checkpoints", "reserved", "lightning-refuses", "negative-steps"])
def test_trainer_keys_are_checked_before_anything_is_written(tmp_path, cli, capsys, trainer, train, expected):
    import re

    spec = _spec(**train)
    spec["trainer"].update(trainer)
    run = tmp_path / "run"
    assert cli(["train", str(_write(tmp_path / "spec.yaml", spec)), "--out", str(run)]) == 2
    error = capsys.readouterr().err
    assert re.search(expected, error) and "Traceback" not in error, error
    assert not run.exists() or not [p for p in run.iterdir() if p.name != ".edh.lock"]


# ---- 6. where a resumed run starts ------------------------------------------------------------------
def test_step_checkpoints_still_end_every_epoch(trained):
    checkpoint = torch.load(trained / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 19  # 19 steps, every 4: Lightning alone would stop at step 16
    assert checkpoint["callbacks"]["ResumeCallback"]["complete"] is True


def test_a_sharded_epoch_order_resumes_where_it_stopped():
    from torch.utils.data import DataLoader

    from edh.train.data_loading import EpochSampler, ResumeCallback

    size, seed, epoch = 23, 4, 2

    def shards(replicas: int, skip: int = 0) -> list[list[int]]:
        out = []
        for rank in range(replicas):
            sampler = EpochSampler(size, seed, replicas=replicas, rank=rank)
            sampler.set_epoch(epoch)
            sampler.skip = skip
            out.append([index for _, index in sampler])
        return out

    order = EpochSampler(size, seed).order(epoch).tolist()
    whole = shards(2)
    assert [len(s) for s in whole] == [12, 12] and whole[0][:3] == order[0:6:2] and whole[1][:3] == order[1:6:2]
    assert sorted(whole[0] + whole[1]) == sorted(order + order[:1])  # padded with the first sample, as torch's
    k = 5  # samples each of the 2 processes trained on before the checkpoint
    assert shards(2, skip=2 * k) == [whole[0][k:], whole[1][k:]]  # the same processes: exactly the rest
    rest = [index for shard in shards(3, skip=2 * k) for index in shard]  # 3 processes now
    unseen = order[2 * k:]
    assert sorted(rest) == sorted(unseen + order[:(-len(unseen)) % 3])  # each unseen sample once, + the padding

    loader = DataLoader(range(size), batch_size=5, sampler=EpochSampler(size, seed, replicas=2, rank=0))
    callback = ResumeCallback(loader)
    callback.epoch, callback.seen = epoch, k
    state = callback.state_dict()
    assert state["position"] == 2 * k and state["replicas"] == 2
    resumed = ResumeCallback(DataLoader(range(size), batch_size=5,
                                        sampler=EpochSampler(size, seed, replicas=3, rank=1)))
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == epoch and resumed.sampler.skip == 2 * k
    state.update(position=20, complete=True)  # saved at the epoch's end: the next one starts
    resumed.load_state_dict(state)
    assert resumed.sampler.epoch == epoch + 1 and resumed.sampler.skip == 0
