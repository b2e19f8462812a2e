"""``--threads`` / ``train.threads`` / ``$EDH_THREADS`` and OpenMP's wait policy (`edh.utils.threads`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_run_spec
from edh.cli import build_parser
from edh.core.errors import SpecError
from edh.core.spec import parse_run_spec
from edh.utils.threads import THREADS_ENV, check_threads, default_threads, set_wait_policy, usable_cores

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in (THREADS_ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}


def _in_fresh_python(code: str, **env: str) -> dict:
    """Run ``code`` (which prints one JSON line last) in a new interpreter, torch not yet loaded."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**CLEAN_ENV, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


APPLY = """
import json, os, sys
from edh.cli import build_parser, _apply_threads, set_wait_policy
set_wait_policy()
args = build_parser().parse_args({argv!r})
torch_before = "torch" in sys.modules
_apply_threads(args)
import torch
print(json.dumps({{"threads": torch.get_num_threads(), "env": os.environ.get("EDH_THREADS"),
                  "wait": os.environ.get("OMP_WAIT_POLICY"), "torch_before": torch_before}}))
"""


def test_threads_parses_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--threads", "3", "list"]).threads == 3
    assert parser.parse_args(["list", "--threads", "2"]).threads == 2
    assert parser.parse_args(["--threads", "3", "list", "--threads", "2"]).threads == 2
    assert parser.parse_args(["list"]).threads is None


@pytest.mark.parametrize("value, message", [("0", "between 1 and 1024"), ("2000", "between 1 and 1024"),
                                            ("two", "whole number"), ("1.5", "whole number")])
def test_bad_thread_counts_are_refused_with_exit_2(capsys, value, message):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--threads", value, "list"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --threads" in err and message in err


def test_threads_option_is_applied_and_exported():
    got = _in_fresh_python(APPLY.format(argv=["--threads", "1", "list"]))
    assert got == {"threads": 1, "env": "1", "wait": "PASSIVE", "torch_before": False}


def test_spec_key_is_used_by_train_and_the_option_wins(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_run_spec(threads=1)))
    assert _in_fresh_python(APPLY.format(argv=["train", str(spec)]))["threads"] == 1
    assert _in_fresh_python(APPLY.format(argv=["train", str(spec), "--threads", "2"]))["threads"] == 2


def test_environment_variable_is_the_default():
    assert _in_fresh_python(APPLY.format(argv=["list"]), EDH_THREADS="1")["threads"] == 1


def test_nothing_given_leaves_torch_unloaded():
    code = ("import json, sys\nfrom edh.cli import build_parser, _apply_threads\n"
            "_apply_threads(build_parser().parse_args(['list']))\n"
            "print(json.dumps({'torch': 'torch' in sys.modules}))")
    assert _in_fresh_python(code) == {"torch": False}


def test_default_threads_reads_the_environment(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == usable_cores() >= 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="EDH_THREADS must be a whole number"):
        default_threads()


def test_check_threads_refuses_booleans_and_floats():
    assert check_threads("4", "x") == 4
    for bad in (True, 2.0, None, 0):
        with pytest.raises(ValueError, match="train.threads"):
            check_threads(bad, "train.threads")


def test_wait_policy_keeps_what_the_environment_says(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    assert set_wait_policy() is ("torch" not in sys.modules)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["KMP_BLOCKTIME"] == "0"


POLICY = """
import json, os, sys
from edh import cli
code = cli.main({argv!r})
print(json.dumps({{"code": code, "wait": os.environ.get("OMP_WAIT_POLICY"),
                  "blocktime": os.environ.get("KMP_BLOCKTIME")}}))
"""


@pytest.mark.parametrize("argv, sleeps", [(["train", "no-such-spec.yaml"], True),
                                          (["finetune", "no-such-run", "--out", "x"], True),
                                          (["translate", "no-such-run", "hello"], False),
                                          (["predict", "no-such-run", "a.png"], False)])
def test_training_commands_let_idle_threads_sleep_and_the_others_keep_openmp_defaults(argv, sleeps):
    """Sleeping OpenMP threads keep training fair on a shared machine (bench/shared_machine.py) but made
    greedy generation 0.56x on a quiet one (bench/wait_policy.py): only training commands ask for it."""
    result = _in_fresh_python(POLICY.format(argv=argv))
    assert result["code"] == 2  # the missing spec / run is a user error; the policy was set before it
    assert (result["wait"], result["blocktime"]) == (("PASSIVE", "0") if sleeps else (None, None))


def test_spec_key_validates():
    assert parse_run_spec(tiny_run_spec()).train.threads is None
    assert parse_run_spec(tiny_run_spec(threads=2)).train.threads == 2
    for bad in (0, 1025, True, "two"):
        with pytest.raises(SpecError, match="train.threads"):
            parse_run_spec(tiny_run_spec(threads=bad))


def test_bad_spec_key_is_a_user_error(tmp_path, capsys):
    from edh.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_run_spec(threads=0)))
    assert main(["train", str(spec), "--out", str(tmp_path / "run")]) == 2
    assert "train.threads" in capsys.readouterr().err
