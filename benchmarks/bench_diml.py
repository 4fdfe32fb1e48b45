"""DIML benchmark: the paper's environments and metrics, beside its released figures.

    PYTHONPATH=. python benchmarks/bench_diml.py            # E1, E2, E3, E7 (released protocol, our draw)
    PYTHONPATH=. python benchmarks/bench_diml.py --quick    # fewer epochs, E7 40x10 (released protocol) only
    PYTHONPATH=. python benchmarks/bench_diml.py --scale    # E7 1000 agents x 50 actions
    PYTHONPATH=. python benchmarks/bench_diml.py --only E7 --e7 40x10   # a subset of environments / sizes
    PYTHONPATH=. python benchmarks/bench_diml.py --select --e7 120x25 --draws 5   # E7 l2 chosen by validation NLL
    PYTHONPATH=. python benchmarks/bench_diml.py --floor-only --e7 40x10,120x25 --draws 5   # the data's level floor
    PYTHONPATH=. python benchmarks/bench_diml.py --export-draws DIR --e7 120x25 --draws 5  # draws for an outside fitter
    PYTHONPATH=. python benchmarks/bench_diml.py --select --import-draws DIR              # fit and score draws from DIR

``--export-draws DIR``: each draw of ``--select`` (truth and data) as ``DIR/e7_{n}x{A}_d{d}.npz``: the
truth's weights (``emb [A, d]``, ``w0, b0, w1, b1, w2, b2``, weights ``[in, out]``, the
``anonymous_embedding`` family), ``actions int[24, 30, n]`` and ``train`` (19), so that another
implementation (the released PyTorch script) can fit the same draws. ``--import-draws DIR`` replaces the
draws by every ``DIR/*.npz`` of that format (drawn here or by the released script); where a file also holds
an outside fit of the same family (``fit_emb``, ``fit_w0``, ...) and its own metric (``released_pair``), the
fit is scored here too (``diml.pair_diff_mse``, exact over action pairs) and reported beside ours.

``--select``: the anonymous model's weight l2 is chosen from ``--grid`` by the NLL of the last 4 of
the 19 training episodes (``diml.select_by_validation``), refit on all 19, and reported beside the
fixed l2 1e-3, over ``--draws`` truth/data draws (draw 0 is the default rows' draw). Each draw also
gets ``diml.level_floor``: the Cramer-Rao floor of the released diff_mse for the truth's action
levels alone, and the realised error of their MLE with everything else known.

Small games (E1-E3, diml-notes.md): logit-Q learners alpha = 0.25, beta = 3, eps = 0.06; 60
training episodes x 60 steps, plus 20 held-out episodes from the same truth.

E7 ("E7" rows) follows the released script's own E7 settings, which differ from the small
games': learners alpha = 0.2, beta = 6, eps = 0.02; 24 episodes x 30 steps, the first 19 for
training; the truth a freshly initialised network of the script's symmetric count family
(``diml_envs.e7_released``). "E7ours" rows are our earlier E7 draw (linear truth at
``E7_SCALE``) under the small games' protocol.

Metrics: diff_mse of payoff differences ``u_i(a, a_-i) - u_i(0, a_-i)`` on 2000 seen joint
actions and 2000 uniform probes; "pair (test)" is the released script's diff_mse (random
action pairs ``a, a'``, held-out contexts; ``diml.pair_diff_mse``), which its E7 figures
report; held-out NLL per agent-step (fitted, true model, frequency baseline); cfkl (20
episodes of the truth under alpha x 0.6, beta x 1.4, eps x 1.5). Fit time: the first epoch
(includes jit compilation) and the mean of the others; metrics are evaluated outside the
timed region. Our E1-E3 truths are our own draws of the paper's families (diml_envs); E1's
payoff scale (E1_SCALE) is calibrated so that the true model's held-out NLL matches the
paper's ("true" column beside "paper"). diff_mse is also given relative to the variance of
the true differences ("rel"). The --scale run (E7 1000x50, no paper figure) keeps our
linear truth at scale 1.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.table import Table

import mechanisms  # noqa: F401  (x64)
from mechanisms import diml
from mechanisms.games import diml_envs as envs
from mechanisms.learning import LogitQParams, logit_q_simulate_episodes

PAPER = {  # (env, method) -> (diff_mse, nll_test, cfkl), final epoch of the released results
    ("E1", "neural"): (0.0098, 1.765, 0.032), ("E1", "tabular"): (0.0129, 1.765, 0.039),
    ("E2", "neural"): (0.0907, 1.538, 0.222), ("E2", "congestion"): (0.0034, 1.522, 0.137),
    ("E2", "tabular"): (0.1332, 1.548, 0.125),
    ("E3", "neural"): (0.0190, 1.911, 0.076), ("E3", "public_goods"): (0.0004, 1.903, 0.072),
    ("E7 40x10", "anonymous"): (2.5e-4, 2.269, 0.095), ("E7 120x25", "anonymous"): (3.4e-5, 3.189, 0.329),
    ("E7 300x40", "anonymous"): (4.3e-5, 3.661, 1.645),
}
E2_PAPER_TARGET = 0.0907  # the released script's final E2 DIML diff_mse
LEARNER = LogitQParams(0.25, 3.0, 0.06)


class Protocol(NamedTuple):
    """Data and learners of one row: ``episodes`` simulated, the first ``train`` for fitting."""

    learner: LogitQParams = LEARNER
    episodes: int = 80
    train: int = 60
    steps: int = 60


SMALL = Protocol()  # the small games' protocol: 60 + 20 held-out episodes x 60 steps, logit-Q 0.25 / 3 / 0.06
_R = envs.E7_RELEASED_PROTOCOL
RELEASED_E7 = Protocol(LogitQParams(*_R["learner"]), _R["episodes"], int(_R["train_fraction"] * _R["episodes"]),
                       _R["steps"])  # the released script's E7: 0.2 / 6 / 0.02, 24 x 30 episodes, 19 for training


class Job(NamedTuple):
    tag: str
    env: envs.Environment
    model: str
    config: diml.FitConfig
    protocol: Protocol = SMALL
    label: str = ""  # method column; the model's name when empty
    paper: tuple | None = None  # (diff_mse, nll_test, cfkl) of the released results
    track_target: float | None = None
    data_key: int = 1  # PRNGKey of the simulated episodes
    actions: np.ndarray | None = None  # the episodes themselves (an imported draw), instead of data_key
    group: str = ""  # the rows averaged together in --select's summary; the tag's size when empty


def simulate(env: envs.Environment, key, episodes: int, steps: int = 60, learner: LogitQParams = LEARNER):
    m = env.mechanism
    pt = m.prepare(env.params)
    sim = jax.jit(lambda k: logit_q_simulate_episodes(k, lambda a: m.counterfactual(pt, a), episodes, m.n_agents,
                                                      m.n_actions, steps, learner))
    return sim(key)


class Draw(NamedTuple):
    """One E7 truth/data draw of the released protocol (``--select``, ``--export-draws``, ``--import-draws``)."""

    tag: str
    group: str  # the draws averaged together: one size, one source
    stem: str  # its file name without .npz (--export-draws, --import-draws)
    env: envs.Environment
    actions: np.ndarray  # int[E, T, n]; the first ``train`` episodes are for fitting
    train: int
    outside: tuple | None = None  # (params of an outside fit of the truth's family, that fit's own metric)


def e7_draws(sizes: list[tuple[int, int]], first: int, count: int) -> list[Draw]:
    """Draw d of each size: truth ``e7_released(PRNGKey(d))``, data ``PRNGKey(1)`` for d = 0 (the default rows'
    draw), else ``PRNGKey(100 + d)``."""
    pr, draws = RELEASED_E7, []
    for n, a in sizes:
        for d in range(first, first + count):
            env = envs.e7_released(jax.random.PRNGKey(d), n, a)
            acts = simulate(env, jax.random.PRNGKey(1 if d == 0 else 100 + d), pr.episodes, pr.steps, pr.learner)
            draws.append(Draw(f"E7 {n}x{a}" + (f" d{d}" if d else ""), f"E7 {n}x{a}", f"e7_{n}x{a}_d{d}", env,
                              np.asarray(acts), pr.train))
    return draws


def save_draw(directory: str, draw: Draw) -> str:
    """``directory/e7_{n}x{A}_d{d}.npz``: the truth's weights (``emb``, ``w0, b0, ...`` as ``[in, out]``),
    ``actions`` and ``train``."""
    p = draw.env.params
    arrays = {"emb": np.asarray(p.emb)}
    for k, (w, b) in enumerate(p.layers):
        arrays[f"w{k}"], arrays[f"b{k}"] = np.asarray(w), np.asarray(b)
    path = os.path.join(directory, draw.stem + ".npz")
    np.savez(path, actions=draw.actions.astype(np.int32), train=np.int32(draw.train), **arrays)
    return path


def _embedding_params(z: dict, path: str, prefix: str = "") -> envs.CountEmbeddingParams:
    if f"{prefix}emb" not in z or f"{prefix}w0" not in z:
        raise SystemExit(f"error: {path}: no {prefix}emb / {prefix}w0 (an E7 draw holds the truth's weights)")
    layers, k = [], 0
    while f"{prefix}w{k}" in z:
        if f"{prefix}b{k}" not in z:
            raise SystemExit(f"error: {path}: {prefix}w{k} without {prefix}b{k}")
        layers.append((jnp.asarray(z[f"{prefix}w{k}"], jnp.float64), jnp.asarray(z[f"{prefix}b{k}"], jnp.float64)))
        k += 1
    return envs.CountEmbeddingParams(jnp.asarray(z[f"{prefix}emb"], jnp.float64), layers)


def load_draw(path: str) -> Draw:
    """A draw written by ``save_draw`` or by an outside implementation in the same format, with that
    implementation's fit of it (``fit_emb``, ``fit_w0``, ... and its metric ``released_pair``) if present."""
    try:
        with np.load(path) as f:
            z = dict(f)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise SystemExit(f"error: {path}: not a readable .npz draw ({e})") from None
    for field in ("actions", "train"):
        if field not in z:
            raise SystemExit(f"error: {path}: no field {field!r}")
    acts = z["actions"].astype(np.int32)
    if acts.ndim != 3:
        raise SystemExit(f"error: {path}: actions must be int[episodes, steps, agents], got shape {acts.shape}")
    truth = _embedding_params(z, path)
    a, d = truth.emb.shape
    n, train = acts.shape[2], int(z["train"])
    if truth.layers[0][0].shape[0] != d + a or not 0 < train < acts.shape[0] or acts.min() < 0 or acts.max() >= a:
        raise SystemExit(f"error: {path}: weights, actions and train do not fit together "
                         f"(emb {truth.emb.shape}, w0 {truth.layers[0][0].shape}, actions {acts.shape}, train {train})")
    mech = envs.anonymous_embedding_mechanism(n, a, truth.layers[0][0].shape[1], len(truth.layers) - 1, embed=d)
    stem = os.path.splitext(os.path.basename(path))[0]
    env = envs.Environment(f"E7 released n={n} A={a} ({stem})", mech, truth, "anonymous_embedding")
    outside = ((_embedding_params(z, path, "fit_"), float(z.get("released_pair", np.nan)))
               if "fit_emb" in z else None)
    return Draw(stem, stem.rsplit("_", 1)[0], stem, env, acts, train, outside)


def heldout_contexts(actions, train: int):
    """The released script's diff_mse contexts: every observed joint action of the held-out episodes but
    the last step's, ``[(E - train) (T - 1), n]``."""
    return actions[train:, :-1].reshape(-1, actions.shape[2])


def run(job: Job, cf_episodes: int = 20):
    env, config, pr = job.env, job.config, job.protocol
    m = env.mechanism
    acts = (jnp.asarray(job.actions) if job.actions is not None
            else simulate(env, jax.random.PRNGKey(job.data_key), pr.episodes, pr.steps, pr.learner))
    train, test = acts[:pr.train], acts[pr.train:]
    seen, probe = diml.seen_and_probe_joints(jax.random.PRNGKey(2), train, m.n_actions,
                                             2000 if m.n_agents * m.n_actions < 5000 else 200)
    test_contexts = heldout_contexts(acts, pr.train)
    mech = diml.make_model(job.model, m.n_agents, m.n_actions)
    fitter = diml.make_fitter(mech, train, pr.learner, config)
    state = fitter.init(jax.random.PRNGKey(3))
    times, reached = [], None
    for e in range(config.epochs):
        t0 = time.perf_counter()
        state, value = fitter.epoch(state)
        value.block_until_ready()
        times.append(time.perf_counter() - t0)
        if job.track_target is not None and reached is None:
            d = float(diml.diff_mse(m, env.params, mech, state.params["mechanism"], seen))
            if d <= job.track_target:
                reached = (e + 1, sum(times), d)
    p = state.params["mechanism"]
    pt = m.prepare(env.params)
    true_d = jax.vmap(lambda j: diml.counterfactual_differences(m, pt, j))(seen)[..., 1:]
    dm_seen = float(diml.diff_mse(m, env.params, mech, p, seen))
    return dict(
        tag=job.tag, group=job.group or job.tag.split(" d")[0],
        model=job.model, label=job.label or job.model, paper=job.paper, n=m.n_agents, A=m.n_actions,
        dmse_seen=dm_seen, dmse_probe=float(diml.diff_mse(m, env.params, mech, p, probe)),
        pair=float(diml.pair_diff_mse(m, env.params, mech, p, test_contexts)),
        rel=dm_seen / float(jnp.var(true_d)),
        nll=float(diml.nll(mech, p, test, pr.learner, jnp.float32 if m.n_agents > 200 else jnp.float64)),
        nll_true=float(diml.nll(m, env.params, test, pr.learner)),
        nll_freq=float(diml.frequency_nll(train, test, m.n_actions)),
        cfkl=float(diml.cfkl(m, env.params, mech, p, jax.random.PRNGKey(4), cf_episodes, pr.steps, pr.learner)),
        first=times[0], per_epoch=float(np.mean(times[1:])) if len(times) > 1 else float("nan"),
        total=sum(times), epochs=config.epochs, steps=config.steps_per_epoch, reached=reached,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs, E7 40x10 (released protocol) only")
    ap.add_argument("--scale", action="store_true", help="only E7 with 1000 agents x 50 actions")
    ap.add_argument("--scale-epochs", type=int, default=200)
    ap.add_argument("--only", default="", help="comma-separated environments to run (E1, E2, E3, E7, E7ours)")
    ap.add_argument("--e7", default="40x10,120x25", help="E7 sizes (n x A) to run, comma-separated")
    ap.add_argument("--methods", default="", help="comma-separated candidate models to run (e.g. tabular)")
    ap.add_argument("--select", action="store_true",
                    help="E7 only: choose the anonymous model's weight l2 by validation NLL "
                         "(last --validation-episodes of the 19 training episodes), then refit on all 19")
    ap.add_argument("--grid", default="3e-4,1e-3,3e-3,1e-2", help="weight l2 values for --select")
    ap.add_argument("--select-epochs", type=int, default=30, help="epochs of every --select fit")
    ap.add_argument("--validation-episodes", type=int, default=4)
    ap.add_argument("--draws", type=int, default=1, help="--select: truth/data draws per size (draw 0 = the bench's)")
    ap.add_argument("--first-draw", type=int, default=0, help="--select: index of the first draw")
    ap.add_argument("--floor-only", action="store_true",
                    help="--select without fits: only each draw's level floor (diml.level_floor)")
    ap.add_argument("--export-draws", metavar="DIR",
                    help="write --select's draws (truth weights, actions) to DIR/e7_{n}x{A}_d{d}.npz and stop")
    ap.add_argument("--import-draws", metavar="DIR",
                    help="--select / --floor-only on the draws DIR/*.npz instead of --e7 / --draws; an outside fit "
                         "stored with a draw (fit_emb, fit_w0, ...) is scored beside ours")
    args = ap.parse_args()
    if args.import_draws and not (args.select or args.floor_only):
        ap.error("--import-draws needs --select or --floor-only")
    console = Console(width=200)
    small = 15 if args.quick else 30
    neural = diml.recommended_config("neural", epochs=small)
    struct = diml.recommended_config("congestion", epochs=small)
    tab = diml.recommended_config("tabular", epochs=small)
    anon = diml.recommended_config("anonymous", epochs=15 if args.quick else 30)
    before = anon._replace(l2=0.0)  # the anonymous fit before the weight l2 (same steps)
    key = jax.random.PRNGKey(0)
    jobs: list[Job] = []
    choices, floors, outside = [], [], []
    if args.select or args.floor_only or args.export_draws:
        grid = [float(v) for v in args.grid.split(",")]
        if args.import_draws:
            paths = sorted(glob.glob(os.path.join(args.import_draws, "*.npz")))
            if not paths:
                raise SystemExit(f"error: {args.import_draws}: no .npz draws")
            draws = [load_draw(p) for p in paths]
        else:
            draws = e7_draws([tuple(map(int, x.split("x"))) for x in args.e7.split(",")], args.first_draw, args.draws)
        if args.export_draws:
            os.makedirs(args.export_draws, exist_ok=True)
            for dr in draws:
                console.print(f"{dr.tag}: {save_draw(args.export_draws, dr)}")
            return
        for dr in draws:
            env, tag = dr.env, dr.tag
            n, a = env.mechanism.n_agents, env.mechanism.n_actions
            paper = PAPER.get((f"E7 {n}x{a}", "anonymous"))
            pr = RELEASED_E7._replace(episodes=dr.actions.shape[0], train=dr.train, steps=dr.actions.shape[1])
            train = jnp.asarray(dr.actions[:dr.train])
            floors.append((tag, dr.group, diml.level_floor(env.mechanism, env.params, train, pr.learner)))
            if dr.outside is not None:
                exact = float(diml.pair_diff_mse(env.mechanism, env.params, env.mechanism, dr.outside[0],
                                                 jnp.asarray(heldout_contexts(dr.actions, dr.train))))
                outside.append((tag, dr.group, dr.outside[1], exact))
            if args.floor_only:
                continue
            console.log(f"{tag}: selecting l2 in {grid}, <= {args.select_epochs} epochs, "
                        f"{args.validation_episodes} of {pr.train} training episodes for validation")
            configs = [anon._replace(l2=v, epochs=args.select_epochs) for v in grid]
            t0 = time.perf_counter()
            choice = diml.select_by_validation(diml.make_model("anonymous", n, a), train, configs,
                                               key=jax.random.PRNGKey(3), learner=pr.learner,
                                               validation_episodes=args.validation_episodes)
            choices.append((tag, grid, choice, time.perf_counter() - t0))
            jobs += [Job(tag, env, "anonymous", anon, pr, "l2 1e-3, 30 epochs (fixed)", paper, actions=dr.actions,
                         group=dr.group),
                     Job(tag, env, "anonymous", choice.config, pr,
                         f"selected: l2 {choice.config.l2:g}, {choice.config.epochs} epochs", paper,
                         actions=dr.actions, group=dr.group)]
    elif args.scale:
        cfg = diml.FitConfig(epochs=args.scale_epochs, steps_per_epoch=1, learning_rate=1e-2, dtype=jnp.float32,
                             agents_per_step=100)
        jobs.append(Job("E7 1000x50", envs.e7_anonymous(key, 1000, 50, scale=1.0), "anonymous", cfg))
    else:
        e1, e2, e3 = envs.e1_neural(key), envs.e2_congestion(key), envs.e3_public_goods(key)
        jobs += [
            Job("E1", e1, "neural", neural, paper=PAPER["E1", "neural"]),
            Job("E1", e1, "tabular", tab._replace(payoff_l2=0.0), label="tabular, no payoff_l2",
                paper=PAPER["E1", "tabular"]),
            Job("E1", e1, "tabular", tab, label="tabular, payoff_l2 1", paper=PAPER["E1", "tabular"]),
            Job("E2", e2, "neural", neural, paper=PAPER["E2", "neural"], track_target=E2_PAPER_TARGET),
            Job("E2", e2, "congestion", struct, paper=PAPER["E2", "congestion"]),
            Job("E2", e2, "tabular", tab._replace(payoff_l2=0.0), label="tabular, no payoff_l2",
                paper=PAPER["E2", "tabular"]),
            Job("E2", e2, "tabular", tab, label="tabular, payoff_l2 1", paper=PAPER["E2", "tabular"]),
            Job("E3", e3, "neural", neural, paper=PAPER["E3", "neural"]),
            Job("E3", e3, "public_goods", struct, paper=PAPER["E3", "public_goods"]),
        ]
        sizes = [tuple(map(int, x.split("x"))) for x in args.e7.split(",")]
        sizes = [(40, 10)] if args.quick else sizes
        for n, a in sizes:  # the released script's E7: its truth family, learners and data
            env = envs.e7_released(key, n, a)
            paper = PAPER[f"E7 {n}x{a}", "anonymous"]
            jobs += [Job(f"E7 {n}x{a}", env, "anonymous", before, RELEASED_E7, "anonymous, no l2", paper),
                     Job(f"E7 {n}x{a}", env, "anonymous", anon, RELEASED_E7, "anonymous, l2 1e-3", paper)]
            if (n, a) == (40, 10):
                jobs.append(Job(f"E7 {n}x{a}", env, "anonymous", before._replace(payoff_l2=10.0), RELEASED_E7,
                                "anonymous, payoff_l2 10", paper))
        if not args.quick:
            for n, a in sizes:  # our own draw (linear truth at E7_SCALE), the small games' protocol
                env = envs.e7_anonymous(key, n, a)
                jobs += [Job(f"E7ours {n}x{a}", env, "anonymous", anon, SMALL, "anonymous, l2 1e-3"),
                         Job(f"E7ours {n}x{a}", env, "anonymous_linear", diml.recommended_config("anonymous_linear"),
                             SMALL, "linear (true family), 300 steps")]
    if args.only and not args.select:
        keep = {t.strip() for t in args.only.split(",")}
        jobs = [j for j in jobs if j.tag.split()[0] in keep]
    if args.methods:
        keep = {t.strip() for t in args.methods.split(",")}
        jobs = [j for j in jobs if j.model in keep]
    rows = []
    t_all = time.perf_counter()
    for job in jobs:
        console.log(f"{job.tag} {job.label or job.model}: {job.config.epochs} epochs x {job.config.steps_per_epoch} steps")
        rows.append(run(job))
    table = Table(title="DIML (JAX) vs released figures (paper)")
    for col in ["env", "method", "diff_mse seen", "probe", "pair (test)", "rel", "paper", "nll_test", "true", "freq",
                "paper", "cfkl", "paper", "1st epoch s", "s/epoch", "total s"]:
        table.add_column(col, justify="right")
    for r in rows:
        p = r["paper"] or (float("nan"),) * 3
        table.add_row(r["tag"], r["label"], f"{r['dmse_seen']:.2e}", f"{r['dmse_probe']:.2e}", f"{r['pair']:.2e}",
                      f"{r['rel']:.3f}", f"{p[0]:.2e}", f"{r['nll']:.3f}", f"{r['nll_true']:.3f}",
                      f"{r['nll_freq']:.3f}", f"{p[1]:.3f}", f"{r['cfkl']:.4f}", f"{p[2]:.3f}", f"{r['first']:.2f}",
                      f"{r['per_epoch']:.3f}", f"{r['total']:.1f}")
    if rows:
        console.print(table)
        console.print("epoch = steps_per_epoch full-batch Adam steps in one jitted call; 1st epoch includes "
                      "compilation. diff_mse: baseline action 0, training contexts; pair: the released script's "
                      "definition (random action pairs, held-out contexts), what its E7 figures report.")
    for r in rows:
        if r["reached"] is not None:
            e, t, d = r["reached"]
            console.print(f"{r['tag']} {r['model']}: diff_mse {d:.4f} <= paper's final {E2_PAPER_TARGET} after {e} "
                          f"epochs, {t:.2f} s wall incl. compile (released script, measured here: 71 s for 100 "
                          "epochs, final diff_mse above 0.0907 on our draw)")
        elif r["tag"] == "E2" and r["model"] == "neural":
            console.print(f"E2 neural never reached diff_mse {E2_PAPER_TARGET}")
        if r["tag"].startswith("E7 1000"):
            console.print(f"E7 1000x50: {r['total']:.0f} s for {r['epochs']} epochs "
                          f"({r['per_epoch']:.2f} s/epoch after compile)")
    for tag, grid, choice, secs in choices:
        every = choice.every
        vt = Table(title=f"{tag}: validation NLL per agent-step (selection took {secs:.0f} s)")
        vt.add_column("l2")
        for e in range(choice.validation_nll.shape[1]):
            vt.add_column(f"ep {(e + 1) * every}", justify="right")
        for v, row in zip(grid, choice.validation_nll):
            vt.add_row(f"{v:g}", *[f"{x:.5f}" for x in row])
        console.print(vt)
    for tag, _, lf in floors:
        console.print(f"{tag}: level floor (truth known up to its action levels, {lf.offsets.size} levels, "
                      f"training episodes only): Cramer-Rao expectation of pair {lf.floor:.2e}, "
                      f"oracle level MLE realised {lf.oracle:.2e}")
    for tag, _, own, exact in outside:
        console.print(f"{tag}: the outside fit stored with the draw: pair (test) {exact:.2e} exact here, "
                      f"{own:.2e} by its own sampled estimate")
    by_group: dict[tuple[str, str], list[float]] = {}
    for r in rows if choices else []:
        by_group.setdefault((r["group"], r["label"].split(":")[0]), []).append(r["pair"])
    for _, group, lf in floors:
        by_group.setdefault((group, "oracle (levels)"), []).append(lf.oracle)
        by_group.setdefault((group, "floor (levels, Cramer-Rao)"), []).append(lf.floor)
    for _, group, _, exact in outside:
        by_group.setdefault((group, "outside fit"), []).append(exact)
    for (group, label), vals in by_group.items():
        console.print(f"{group} {label}: pair (test) over {len(vals)} draws: mean {np.mean(vals):.2e}, "
                      f"min {np.min(vals):.2e}, max {np.max(vals):.2e}")
    console.print(f"benchmark wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
