"""Distributed data-parallel training on CPUs: two ``mtt train`` processes (gloo).

The processes see the environment of a two-task SLURM job on one node, which is how
metatrain's launcher finds its rank, world size and master; ``device: cpu`` makes the
trainer start a gloo process group instead of NCCL.
"""

import os
import shutil
import socket
import subprocess

import metatomic.torch  # noqa: F401 (checkpoints hold metatomic classes)
import torch
from test_mtt_cli import BIN, DATASET, options


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes(tmp_path):
    shutil.copy(DATASET, tmp_path / "train.xyz")
    # with a time budget shorter than an epoch: the ranks must agree to stop after one
    training = f"distributed: true\ndistributed_port: {free_port()}\n"
    training += "time_budget: 0.001\ntime_budget_clock: cpu\nnum_epochs: 3\n"
    text = options(training=training).replace("seed: 42", "seed: 42\ndevice: cpu")
    text = text.replace("    num_epochs: 1\n", "")
    (tmp_path / "options.yaml").write_text(text)

    processes = []
    for rank in range(2):
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1",
            SLURM_JOB_ID="1",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NODELIST="localhost",
        )
        processes.append(
            subprocess.Popen(
                [str(BIN / "mtt"), "train", "options.yaml"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [process.communicate(timeout=600)[0] for process in processes]
    for rank, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f"rank {rank}:\n{log[-5000:]}"

    assert "Training on 2 devices with dtype torch.float32" in logs[0]
    # only the main process logs metrics and writes the model
    assert "validation energy RMSE" in logs[0]
    assert "validation energy RMSE" not in logs[1]
    assert "Final checkpoint" not in logs[1]
    assert "Stopping after epoch 1 of 3" in logs[0]
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=False)
    assert checkpoint["epoch"] == 0
    assert checkpoint["architecture_name"] == "experimental.lorem_mta"
    assert all(torch.isfinite(v).all() for v in checkpoint["model_state_dict"].values())
    assert (tmp_path / "model.pt").exists()
