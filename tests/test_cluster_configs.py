"""configs/cluster: the DDP overrides parse with the real CLI on top of the recipe, and the sbatch and torchrun
scripts start what the YAML expects (SLURM's task layout must equal trainer.num_nodes x trainer.devices, or
Lightning refuses to start)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medmtl.cli import main

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster"
SBATCH = CLUSTER / "slurm_ddp.sbatch"
TORCHRUN = CLUSTER / "torchrun_ddp.sh"


def printed_config(capsys, argv: list[str]) -> dict:
    """The merged config ``medmtl <argv> --print_config`` prints (it exits 0 after printing)."""
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def sbatch_options(path: Path) -> dict[str, str]:
    options = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value
    return options


def srun_command(path: Path) -> list[str]:
    """The ``medmtl`` arguments of the script's ``srun medmtl ...`` line, without the forwarded "$@"."""
    (line,) = [line for line in path.read_text().splitlines() if line.startswith("srun ")]
    words = shlex.split(line)
    assert words[:2] == ["srun", "medmtl"] and words[-1] == "$@", line
    return words[2:-1]


@pytest.mark.parametrize("script", [SBATCH, TORCHRUN])
def test_scripts_are_valid_bash(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_sbatch_task_layout_matches_the_yaml(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the script runs from the repository root
    argv = srun_command(SBATCH)
    assert argv[0] == "fit"
    config = printed_config(capsys, argv)
    trainer = config["trainer"]
    assert (trainer["accelerator"], trainer["strategy"], trainer["sync_batchnorm"]) == ("gpu", "ddp", True)
    options = sbatch_options(SBATCH)
    assert int(options["nodes"]) == trainer["num_nodes"]
    assert int(options["ntasks-per-node"]) == int(options["gpus-per-node"]) == trainer["devices"]
    assert options["signal"].startswith("SIGUSR1@")  # what Lightning's SLURM requeue listens for
    # The recipe underneath is kept: only the trainer's layout changes.
    assert config["model"]["model"]["class_path"] == "medmtl.models.recon_seg.ReconSegNet"
    assert config["data"]["batch_size"] == 4


def test_torchrun_script_requires_its_node_rank():
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR")}
    result = subprocess.run([str(TORCHRUN)], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "NODE_RANK" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_torchrun_script_starts_the_cli_with_its_layout():
    """One node, one process, through torchrun for real; the CLI prints the merged config and exits."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NNODES": "1",
        "NPROC_PER_NODE": "1",
        "NODE_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    result = subprocess.run(
        [str(TORCHRUN), "--print_config"], cwd=REPO, env=env, capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stderr[-2000:]
    trainer = yaml.safe_load(result.stdout)["trainer"]
    # devices arrives as the string "1" from the command line; Lightning parses both forms alike.
    assert (trainer["num_nodes"], int(trainer["devices"]), trainer["strategy"]) == (1, 1, "ddp")
