"""torchrun with 2 gloo processes on tiny features: both ranks end with identical weights, and the
result matches one process with the same global batch (the loss is computed over the gathered
global batch, so this holds for the CCC loss too, which does not decompose per rank)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import feature_args, make_feature_data

from rja_models import train
from rja_models.checkpoint import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("loss", ["ccc", "mse"])
def test_two_processes_match_one(tmp_path: Path, loss: str) -> None:
    data = make_feature_data(tmp_path / "data", videos=6, clips=12)
    # No dropout: its masks are drawn per rank, which one process cannot reproduce.
    # SGD: unlike Adam, it is not invariant to a wrong gradient scale.
    options = ["--epochs", "2", "--dropout", "0", "--loss", loss, "--optimizer", "sgd", "--lr", "0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "torch.distributed.run", "--nproc_per_node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "rja_models.train",
           *feature_args(data, tmp_path / "ddp", *options)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks hold identical weights
    assert not any(p.name.startswith("rank") for p in (tmp_path / "ddp").iterdir())  # only rank 0 wrote

    single = train.main(feature_args(data, tmp_path / "one", *options))
    a, b = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("ddp", "one"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for h_ddp, h_one in zip(summary["history"], single["history"]):
        assert h_ddp["train_loss"] == pytest.approx(h_one["train_loss"], rel=1e-4, abs=1e-5)
        for k in ("valence", "arousal", "mean"):
            # Validation CCC is over the whole split, gathered from both ranks.
            assert h_ddp["val"][k] == pytest.approx(h_one["val"][k], rel=1e-4, abs=1e-5)
