"""The released DIML script's own E7 fit, on draws written by ``bench_diml.py --export-draws`` or on its own.

Needs PyTorch and the released script (``run_experiments.py`` of the repository
ryeii/DIML-Differentiable-Inverse-Mechanism-Learning, not shipped here) on ``PYTHONPATH``;
nothing of this project is imported, so it runs wherever that script runs (a GPU makes a
120 x 25 fit take minutes instead of the ~45 min of 2 CPU cores)::

    PYTHONPATH=. python benchmarks/bench_diml.py --export-draws draws --e7 40x10,120x25 --draws 5
    PYTHONPATH=/path/to/DIML python benchmarks/released_e7.py ours draws fitted       # its fit of our draws
    PYTHONPATH=/path/to/DIML python benchmarks/released_e7.py theirs theirs 120 25 0,1,2,3,4   # its own draws
    PYTHONPATH=. python benchmarks/bench_diml.py --select --import-draws fitted       # ours beside it, scored here

Everything that decides the result is the script's own: ``SymmetricCountMechanism`` (truth
and candidate), ``LogitQRule`` (0.2 / 6 / 0.02), ``generate_dataset_stateless`` (24 x 30
episodes), ``split_train_test`` (first 19 for training), ``DIMLTrainer.fit`` with its
``train_cfg_large`` (200 epochs, batch 8, Adam lr 1e-3, weight decay 1e-6, clip 1,
``reg_l2_pay`` 1e-4) and ``payoff_difference_mse`` on the held-out episodes (50,000 sampled
contexts). ``theirs`` draws as its E7 runner does, after ``set_seed(s)``: the truth, then the
data, then the candidate. Each output ``.npz`` holds the truth (``emb``, ``w0, b0, ...`` as
``[in, out]``), ``actions``, ``train``, the fitted candidate (``fit_emb``, ``fit_w0``, ...)
and the script's metric (``released_pair``), in the format ``bench_diml.py --import-draws``
reads. ``FIT_SECONDS`` stops a fit early (between 10-epoch calls); ``epochs`` records how far
it got.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import numpy as np
import torch
from run_experiments import (  # the released script
    DIMLTrainer, LogitQRule, SymmetricCountMechanism, TrainCfg, behavior_nll_per_agent_step,
    generate_dataset_stateless, payoff_difference_mse, set_seed, split_train_test,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LEARNER = (0.2, 6.0, 0.02)  # the script's gen_cfg_large = infer_cfg_large
EPOCHS = int(os.environ.get("EPOCHS", "200"))
DEADLINE = time.time() + float(os.environ.get("FIT_SECONDS", "1e9"))


def train_cfg() -> TrainCfg:
    """The script's ``train_cfg_large`` (printing every 50 epochs)."""
    return TrainCfg(epochs=EPOCHS, batch_size=8, lr=1e-3, trunc_bptt=30, verbose_every=50, reg_l2_pay=1e-4)


def weights(mech: SymmetricCountMechanism) -> dict[str, np.ndarray]:
    linear = [m for m in mech.net if isinstance(m, torch.nn.Linear)]
    out = {"emb": mech.a_emb.weight.detach().cpu().numpy().astype(np.float64)}
    for k, m in enumerate(linear):
        out[f"w{k}"] = m.weight.detach().cpu().numpy().T.astype(np.float64)
        out[f"b{k}"] = m.bias.detach().cpu().numpy().astype(np.float64)
    return out


def load_weights(mech: SymmetricCountMechanism, z: dict[str, np.ndarray]) -> SymmetricCountMechanism:
    linear = [m for m in mech.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        mech.a_emb.weight.copy_(torch.as_tensor(z["emb"], dtype=torch.float32))
        for k, m in enumerate(linear):
            m.weight.copy_(torch.as_tensor(z[f"w{k}"].T, dtype=torch.float32))
            m.bias.copy_(torch.as_tensor(z[f"b{k}"], dtype=torch.float32))
    for p in mech.parameters():
        p.requires_grad = False
    return mech


def fit_and_score(truth: SymmetricCountMechanism, actions: torch.Tensor, tag: str, candidate_seed: int | None,
                  eval_seed: int) -> dict:
    """The script's E7 fit of ``actions`` (first 80 % of the episodes) and its metric on the rest; the candidate is
    drawn after ``set_seed(candidate_seed)``, or from the generator as it stands when ``None`` (the script's way)."""
    _, _, n = actions.shape
    a = truth.n_actions
    train, test = split_train_test(actions, 0.8)
    learner = LogitQRule(n, a, *LEARNER)
    if candidate_seed is not None:
        set_seed(candidate_seed)
    candidate = SymmetricCountMechanism(n_actions=a, hidden=256, depth=2).to(DEVICE)
    trainer = DIMLTrainer(candidate, learner, n, a, DEVICE, train_cfg(), scalable_count=True)
    curves: list[dict] = []
    t0 = time.time()
    while len(curves) < EPOCHS and time.time() < DEADLINE:
        trainer.cfg.epochs = min(10, EPOCHS - len(curves))  # the script's loop, <= 10 epochs a call (FIT_SECONDS)
        trainer.fit(train, tag, curves)
    seconds = time.time() - t0
    torch.manual_seed(eval_seed)
    result = {"released_pair": payoff_difference_mse(candidate, truth, test, a, scalable_count=True,
                                                     max_samples=50000),
              "released_nll": behavior_nll_per_agent_step(candidate, test, learner, a, scalable_count=True),
              "true_nll": behavior_nll_per_agent_step(truth, test, learner, a, scalable_count=True),
              "fit_seconds": seconds, "epochs": len(curves)}
    print(json.dumps({"tag": tag, **result}), flush=True)
    fit = {f"fit_{k}": v.astype(np.float32) for k, v in weights(candidate).items()}
    return {**result, **fit, "train_loss": np.array([c["train_loss"] for c in curves])}


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[1] not in ("ours", "theirs") or (sys.argv[1] == "theirs" and len(sys.argv) != 6):
        raise SystemExit(__doc__)
    print(f"device {DEVICE}, torch {torch.__version__}", flush=True)
    if sys.argv[1] == "ours":
        src, dst = sys.argv[2], sys.argv[3]
        paths = sorted(glob.glob(os.path.join(src, "*.npz")))
        if not paths:
            raise SystemExit(f"error: {src}: no .npz draws")
        os.makedirs(dst, exist_ok=True)
        for path in paths:
            z = dict(np.load(path))
            truth = load_weights(SymmetricCountMechanism(n_actions=z["emb"].shape[0]).to(DEVICE), z)
            actions = torch.as_tensor(z["actions"], dtype=torch.long, device=DEVICE)
            z.update(fit_and_score(truth, actions, os.path.basename(path), candidate_seed=0, eval_seed=10_000))
            np.savez_compressed(os.path.join(dst, os.path.basename(path)), **z)
    else:
        dst, n, a = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        os.makedirs(dst, exist_ok=True)
        for s in [int(x) for x in sys.argv[5].split(",")]:
            set_seed(s)  # as the script's E7 runner: truth, data, then the candidate
            truth = SymmetricCountMechanism(n_actions=a, hidden=256, depth=2).to(DEVICE)
            for p in truth.parameters():
                p.requires_grad = False
            learner = LogitQRule(n, a, *LEARNER)
            actions = generate_dataset_stateless(truth, learner, n, a, 24, 30, DEVICE, scalable_count=True)["actions"]
            name = f"released_{n}x{a}_s{s}.npz"
            z = {**weights(truth), "actions": actions.cpu().numpy().astype(np.int32), "train": np.int32(19)}
            z.update(fit_and_score(truth, actions, name, candidate_seed=None, eval_seed=10_000 + s))
            np.savez_compressed(os.path.join(dst, name), **z)


if __name__ == "__main__":
    main()
