"""Exploratory search for a robust PPO recipe on CartPole (issue 18's goal), seed by seed.

Each recipe named on the command line is trained from scratch for every seed given and
evaluated as ``benchmarks/rl_training.py`` does (greedy policy, clean and under uniform noise,
PGD-5 on its actor and a learned adversary - a PA-AD director PPO agent trained for
``--adversary-iterations`` against it - all at L-inf ``--eps``, default 0.1, over
``--episodes`` episodes). One JSON line per (recipe, seed) is appended to ``--out``, the
recipe written with all its parameters (``ppo`` with ``--iterations 24`` is recorded as
``ppo-24``); ``--summary`` prints mean and 95% t intervals per recipe from that file. Use it
to screen recipes on a few seeds before a full ``rl_training.py`` run; the figures quoted in
docs/rl.md ("What was tried") came from it and from its earlier form.

Recipes (``N`` = PPO iterations of 8 x 128 steps, default ``--iterations``):

- ``ppo[-N]``: plain PPO.
- ``adv-P-RAMP[-N]``: adversarial collection, PGD-3 on the live actor applied to each step with
  probability P, eps ramped linearly from 0 to ``--eps`` over the first RAMP iterations.
- ``sa-W[-N]``: SA-PPO with regularizer weight W (sa_eps = ``--eps``, PGD-5 solver).
- ``atla-WARM-R-V-A-P``: ATLA, WARM clean iterations then R rounds of A adversary and V victim
  iterations, the victim attacked with probability P.
- ``bias-P[-N[-S]]``: sensor-offset randomization: training observations carry one offset per
  episode drawn in the L-inf ball of radius ``S * --eps`` (S defaults to 1;
  ``ObservationNoise(kind="bias")``), with probability P.
- ``biasatla-WARM-R-V-A-P``: ATLA on sensor-offset-randomized training environments.

``--decay`` anneals Adam's learning rate linearly to 0 over the training (common for PPO on
CartPole); ``--shape S`` trains on potential-shaped rewards, potential ``S * (-|theta| / 0.21 -
|x| / 2.4)`` (policy-invariant, Ng et al. 1999).

Run: ``.venv/bin/python benchmarks/rl_recipe_search.py --seeds 0,1,2 --recipes ppo,bias-1.0``
(one process per core: start two with disjoint ``--seeds``), then ``--summary``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from keras_secure import rl  # noqa: E402
from keras_secure.demo import ch5_rl  # noqa: E402
from keras_secure.rl.metrics import evaluate_batched, mean_confidence_interval  # noqa: E402

EPS = ch5_rl.STATE_EPS  # replaced by --eps


#: recipe -> its parameters: (name, type, lowest allowed, highest allowed, default or None if
#: required); parameters are written after the recipe's name, separated by "-"
RECIPES = {
    "ppo": [("N", int, 1, None, "--iterations")],
    "adv": [("P", float, 0.0, 1.0, None), ("RAMP", int, 0, None, None),
            ("N", int, 1, None, "--iterations")],
    "sa": [("W", float, 0.0, None, None), ("N", int, 1, None, "--iterations")],
    "bias": [("P", float, 0.0, 1.0, None), ("N", int, 1, None, "--iterations"),
             ("S", float, 1e-9, None, 1.0)],
    "atla": [("WARM", int, 0, None, None), ("R", int, 1, None, None), ("V", int, 1, None, None),
             ("A", int, 1, None, None), ("P", float, 0.0, 1.0, None)],
}
RECIPES["biasatla"] = RECIPES["atla"]
GRAMMAR = ", ".join(name + "".join(f"-{p[0]}" if p[4] is None else f"[-{p[0]}]" for p in params)
                    for name, params in RECIPES.items())


def parse_recipe(text: str, iterations: int) -> tuple[str, list]:
    """``"adv-0.5-12"`` -> ``("adv", [0.5, 12, iterations])``, validated; raises ValueError
    naming the recipe and the grammar."""
    kind, *values = text.split("-")
    if kind not in RECIPES:
        raise ValueError(f"unknown recipe {text!r}; recipes: {GRAMMAR}")
    params = RECIPES[kind]
    required = sum(p[4] is None for p in params)
    if not required <= len(values) <= len(params):
        optional = "-".join(p[0] for p in params[required:])
        raise ValueError(f"recipe {text!r}: {kind} takes "
                         f"{kind + ''.join('-' + p[0] for p in params[:required])}"
                         + (f", optionally followed by -{optional}" if optional else ""))
    out = []
    for (name, cast, low, high, default), value in zip(
            params, values + [None] * (len(params) - len(values))):
        if value is None:
            out.append(iterations if default == "--iterations" else default)
            continue
        try:
            number = cast(value)
        except ValueError:
            raise ValueError(f"recipe {text!r}: {name} must be {cast.__name__}; received "
                             f"{value!r}") from None
        if not np.isfinite(number) or number < low or (high is not None and number > high):
            raise ValueError(f"recipe {text!r}: {name} must be in [{low}, "
                             f"{'inf' if high is None else high}]; received {value!r}")
        out.append(number)
    return kind, out


def summary(path: str) -> None:
    groups = collections.defaultdict(list)
    seen = set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                key = (row["options"], row["recipe"], row["seed"])
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"--summary: line {number} of {path} is not a result line of "
                                 "this script") from None
            if key in seen:  # a re-run seed would count twice and narrow the interval
                raise SystemExit(f"--summary: seed {key[2]} of recipe {key[1]!r} ({key[0]}) "
                                 f"appears twice in {path}; remove one of the lines")
            seen.add(key)
            groups[key[:2]].append(row)
    if not groups:
        raise SystemExit(f"--summary: {path} holds no results")
    for (options, recipe), rows in sorted(groups.items()):
        parts = [f"{options} {recipe}: {len(rows)} seeds"]
        for key in ("clean", "noise", "pgd", "learned", "worst"):
            values = [r[key] for r in rows]
            parts.append(f"{key} {mean_confidence_interval(values)}" if len(values) > 1
                         else f"{key} {values[0]:.1f}")
        print("; ".join(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--recipes", default="ppo",
                        help=f"comma-separated recipes, each one of: {GRAMMAR} (see the "
                             "module docstring)")
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--adversary-iterations", type=int, default=8)
    parser.add_argument("--eps", type=float, default=ch5_rl.STATE_EPS,
                        help="L-inf budget of the attacks and of the robust training")
    parser.add_argument("--decay", action="store_true")
    parser.add_argument("--shape", type=float, default=0.0)
    parser.add_argument("--out", default="rl_recipe_search.jsonl")
    parser.add_argument("--summary", action="store_true", help="summarize --out and exit")
    args = parser.parse_args()
    if args.summary:
        if not os.path.exists(args.out):
            parser.error(f"--summary: no results file {args.out} (give it with --out)")
        return summary(args.out)
    for name in ("iterations", "episodes", "adversary_iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; received "
                         f"{getattr(args, name)}")
    if not 0 < args.eps < float("inf"):
        parser.error(f"--eps must be a finite number > 0; received {args.eps}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers; received {args.seeds!r}")
    try:  # each recipe is labelled with every parameter it ran with (defaults resolved)
        recipes = [(kind + "".join(f"-{v:g}" for v in values), kind, values)
                   for kind, values in (parse_recipe(name, args.iterations)
                                        for name in args.recipes.split(","))]
    except ValueError as err:
        parser.error(str(err))
    if min(seeds) < 0 or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds must be distinct integers >= 0; received {args.seeds}")
    global EPS
    EPS = args.eps

    import tensorflow as tf

    from keras_secure.rl import ppo

    def make():
        return gym.make(ch5_rl.ENV_ID)

    def train_env():
        if not args.shape:
            return make()
        return rl.RewardShaping(make(), potential=lambda o: args.shape * ch5_rl._potential(o),
                                gamma=0.99)

    def biased():
        return rl.ObservationNoise(train_env(), EPS, kind="bias")

    def new_agent(seed, iterations, **kwargs):
        if args.decay:  # TF-Agents' PPO takes one optimizer step per epoch (10 per iteration)
            schedule = tf.keras.optimizers.schedules.PolynomialDecay(1e-3, iterations * 10, 0.0)
            kwargs["optimizer"] = tf.keras.optimizers.Adam(schedule)
        return ppo.make_ppo_agent(make(), seed=seed, num_epochs=10, **kwargs)

    def evaluate(agent, seed):
        act = ppo.greedy_action_fn(agent)
        eval_seed = 1000 + 100 * seed

        def measure(observe=None):
            stats, _ = evaluate_batched(make, act, args.episodes, eval_seed, observe=observe,
                                        max_steps=500)
            return stats.mean

        scores = ppo.logits_fn(agent)
        out = {"clean": measure(), "noise": measure(ch5_rl.noise_attack(EPS, eval_seed)),
               "pgd": measure(ch5_rl.pgd_attack(scores, EPS, 5, eval_seed))}
        adversary, perturber = ppo.make_adversary(make(), scores, EPS, seed=seed + 31,
                                                  attack_steps=10, num_epochs=10)
        rollout = ppo.VectorRollout(make, 8, seed=seed + 5000)
        ppo.train_adversary(adversary, perturber, rollout, args.adversary_iterations, 128)
        rollout.close()
        out["learned"] = measure(ppo.learned_attack(adversary, perturber))
        out["worst"] = min(out["noise"], out["pgd"], out["learned"])
        return out

    def atla(seed, values, env_fn):
        warm, rounds, victim_its, adversary_its, probability = values
        agent = new_agent(seed, warm + rounds * victim_its)
        ppo.atla_train(agent, env_fn, EPS, rounds=rounds, victim_iterations=victim_its,
                       adversary_iterations=adversary_its, seed=seed, probability=probability,
                       attack_steps=10, warmup_iterations=warm, num_epochs=10)
        return agent

    # everything that sets the budget is in the key --summary groups by
    options = " ".join(f"{k}={v}" for k, v in (
        ("eps", args.eps), ("decay", args.decay), ("shape", args.shape),
        ("episodes", args.episodes), ("adversary_iterations", args.adversary_iterations)))
    for seed in seeds:
        for name, kind, values in recipes:
            start = time.perf_counter()
            if kind in ("atla", "biasatla"):
                agent = atla(seed, values, biased if kind == "biasatla" else train_env)
            else:
                env_fn = train_env
                if kind == "bias":
                    probability, n, scale = values
                    env_fn = lambda p=probability, r=scale * EPS: (  # noqa: E731
                        rl.ObservationNoise(train_env(), r, kind="bias", probability=p))
                n = values[{"ppo": 0, "adv": 2, "sa": 1, "bias": 1}[kind]]
                agent = new_agent(seed, n, **({"sa_eps": EPS, "sa_weight": values[0],
                                               "sa_steps": 5} if kind == "sa" else {}))
                rollout = ppo.VectorRollout(env_fn, 8, seed=seed)
                if kind == "adv":
                    scores = ppo.logits_fn(agent)
                    probability, ramp = values[0], values[1]
                    for i in range(n):
                        eps = EPS * min(1.0, (i + 1) / ramp) if ramp else EPS
                        attack = ch5_rl.pgd_attack(scores, eps, 3, seed + i,
                                                   probability=probability)
                        ppo.train_ppo(agent, rollout, 1, 128, observe=attack)
                else:
                    ppo.train_ppo(agent, rollout, n, 128)
                rollout.close()
            seconds = time.perf_counter() - start
            row = {"recipe": name, "options": options, "seed": seed, **evaluate(agent, seed),
                   "train_seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
