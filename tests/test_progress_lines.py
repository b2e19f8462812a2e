"""Plain progress lines when the output is not a terminal (CI logs, ``| tee``, notebooks)."""

from __future__ import annotations

import io
import re

import pytest

from conftest import tiny_run_spec

LINE = re.compile(r"^epoch 1/1  step (\d+)/(\d+)  [\d.]+ it/s  \d+ samples/s  ETA \d+:\d\d:\d\d  loss [\d.e+-]+$")


def _spec(**trainer) -> dict:
    spec = tiny_run_spec(epochs=1)
    spec["model"]["encoder"]["channels"] = [4, 8]
    spec["trainer"] = {"accelerator": "cpu", "devices": 1, **trainer}
    return spec


def test_a_tiny_training_prints_plain_lines_when_stdout_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    from edh.core.spec import parse_run_spec
    from edh.train.runner import train_run

    monkeypatch.setenv("EDH_PROGRESS_SECONDS", "0")  # a line after every batch
    train_run(parse_run_spec(_spec()), tmp_path / "run", max_steps=3)
    captured = capsys.readouterr()  # pytest's capture: stdout and stderr are not terminals
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, captured.out
    assert all(LINE.match(line) for line in lines), lines
    assert [int(LINE.match(line)[1]) for line in lines] == [1, 2, 3]
    assert "it/s]" not in captured.err  # no tqdm bar


def test_a_terminal_or_an_explicit_setting_keeps_lightnings_choice(tmp_path, monkeypatch):
    from edh.core.spec import parse_run_spec
    from edh.train import runner
    from edh.train.progress import PlainProgress

    def plain(trainer):
        return any(isinstance(c, PlainProgress) for c in trainer.callbacks)

    assert plain(runner.make_trainer(parse_run_spec(_spec()), tmp_path))
    assert not plain(runner.make_trainer(parse_run_spec(_spec(enable_progress_bar=True)), tmp_path))
    assert not plain(runner.make_trainer(parse_run_spec(_spec(enable_progress_bar=False)), tmp_path))
    monkeypatch.setattr("edh.train.progress.wants_plain_progress", lambda streams=None: False)
    trainer = runner.make_trainer(parse_run_spec(_spec()), tmp_path)
    assert not plain(trainer) and trainer.progress_bar_callback is not None


def test_the_interval_comes_from_the_environment(monkeypatch, caplog):
    from edh.train.progress import PlainProgress, format_duration, wants_plain_progress

    monkeypatch.setenv("EDH_PROGRESS_SECONDS", "2.5")
    assert PlainProgress().interval == 2.5
    monkeypatch.setenv("EDH_PROGRESS_SECONDS", "soon")
    assert PlainProgress().interval == 5.0 and "EDH_PROGRESS_SECONDS" in caplog.text
    monkeypatch.delenv("EDH_PROGRESS_SECONDS")
    assert PlainProgress().interval == 5.0
    assert format_duration(3725) == "1:02:05" and format_duration(float("inf")) == "?"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not wants_plain_progress((Tty(), Tty())) and wants_plain_progress((Tty(), io.StringIO()))
