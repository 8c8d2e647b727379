"""Robust PPO recipes over several training seeds, with 95% confidence intervals: the seed's
Tables 3 and 4 on TF-Agents PPO (CartPole-v1), the learned adversary, and the goal comparison.

Each seed trains demo chapter 5's eight PPO recipes (plain PPO; PPO on reward sign flips, and
behind RewardGuard / DynamicRewardShaping; SA-PPO; adversarial collection; sensor-offset
randomization; ATLA) at a budget
above the chapter's full one (``ch5_rl._settings(False, benchmark=True)``: 24 iterations of
8 x 128 steps per agent) and evaluates the greedy policies clean and under random noise, PGD on the
actor and a learned adversary (PA-AD director) trained against each agent
(``keras_secure.demo.ch5_rl.run_seed``). Reported per recipe: mean and 95% Student-t interval
over seeds of the clean reward, the reward under each attack, the worst over attacks and the
restoration; then the goal: a recipe whose worst-case interval lies above vanilla PPO's while
keeping >= 90% of its clean reward. Before training, the rollout throughput of one environment
against 8 stepped together (in this process, and in worker processes) is measured in the same
run.

Per-seed results are appended to ``--out`` (JSON) as they finish, so a long run can be read
(or resumed with ``--resume``) before it ends. TF-Agents agents need ``TF_USE_LEGACY_KERAS=1``
before TensorFlow is imported: this script sets it first thing.

With ``--jobs 2`` (the default) seeds run in two worker processes, one per core, each with
one TensorFlow thread (six seeds took 12 min here; the earlier one-process run took 48 min for
five, on a more loaded machine). Each seed is seeded by its index, so its results do not depend
on the process it ran in (seeds 0-4 came out identical to the one-process run). ``--eps`` sets
the attacks' and the robust recipes' L-inf budget (default: the chapter's 0.1).

Run: ``.venv/bin/python benchmarks/rl_training.py [--seeds 6] [--jobs 2] [--out rl_training.json]``.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from keras_secure.demo import ch5_rl  # noqa: E402
from keras_secure.rl import ppo  # noqa: E402
from keras_secure.rl.metrics import mean_confidence_interval  # noqa: E402


def throughput(steps: int = 128, seed: int = 0) -> list[tuple[str, float]]:
    """Environment steps per second of PPO collection (policy included) on CartPole: one
    environment, 8 in this process (SyncVectorEnv), 8 in worker processes (AsyncVectorEnv);
    and the same with a PGD-3 attack on every observation (adversarial collection)."""
    make = lambda: gym.make(ch5_rl.ENV_ID)  # noqa: E731
    agent = ppo.make_ppo_agent(make(), seed=seed)
    attack = ch5_rl.pgd_attack(ppo.logits_fn(agent), ch5_rl.STATE_EPS, 3, seed)
    rows = []
    for observe, label in ((None, ""), (attack, ", PGD-3 on every observation")):
        for name, n, asynchronous in (("1 environment", 1, False),
                                      ("8 environments, one process (SyncVectorEnv)", 8, False),
                                      ("8 environments, worker processes (AsyncVectorEnv)", 8,
                                       True)):
            rollout = ppo.VectorRollout(make, n, seed=seed, asynchronous=asynchronous)
            rollout.collect(agent, 4, observe=observe)  # tracing, worker start-up
            _, stats = rollout.collect(agent, steps * 8 // n, observe=observe)
            rollout.close()
            rows.append((name + label, stats.steps / stats.seconds))
            print(f"| {name + label} | {stats.steps / stats.seconds:.0f} |", flush=True)
    return rows


def summarize(per_seed: list[dict]) -> dict:
    """Per recipe: 95% intervals over seeds of clean, each attack, worst, restoration."""
    out = {}
    for recipe, (kind, description) in ch5_rl.RECIPES.items():
        clean = [r[recipe]["clean"]["mean"] for r in per_seed]
        ppo_clean = [r["ppo"]["clean"]["mean"] for r in per_seed]
        entry = {"description": description, "kind": kind,
                 "clean": mean_confidence_interval(clean),
                 "clean_ratio": mean_confidence_interval(
                     [c / p for c, p in zip(clean, ppo_clean)])}
        if kind == "state":
            for attack in ch5_rl.STATE_ATTACKS:
                entry[attack] = mean_confidence_interval([r[recipe][attack]["mean"]
                                                          for r in per_seed])
            worst = [min(r[recipe][a]["mean"] for a in ch5_rl.STATE_ATTACKS) for r in per_seed]
            entry["worst"] = mean_confidence_interval(worst)
            entry["restoration"] = mean_confidence_interval(
                [w / p for w, p in zip(worst, ppo_clean)])
        else:
            entry["restoration"] = mean_confidence_interval(
                [c / p for c, p in zip(clean, ppo_clean)])
        out[recipe] = entry
    return out


def report(per_seed: list[dict], settings: dict) -> None:
    s = summarize(per_seed)
    print(f"\n{ch5_rl.ENV_ID}, {len(per_seed)} training seeds, {settings['iterations']} PPO "
          f"iterations of {settings['num_envs']} x {settings['steps']} steps, "
          f"{settings['episodes']} evaluation episodes per seed, L-inf {settings['eps']}; "
          "mean [95% t interval over seeds]\n")
    print("| recipe | clean reward | random noise | PGD | learned adversary | worst over "
          "attacks | restoration (worst / PPO clean) | clean / PPO clean |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe, e in s.items():
        if e["kind"] != "state":
            continue
        print(f"| {e['description']} | {e['clean']} | {e['noise']} | {e['pgd']} | "
              f"{e['learned']} | {e['worst']} | {100 * e['restoration'].mean:.1f}% | "
              f"{100 * e['clean_ratio'].mean:.1f}% |")
    print("\n| reward recipe | clean (true) reward | restoration (/ PPO clean) |")
    print("|---|---|---|")
    for recipe, e in s.items():
        if e["kind"] == "reward":
            print(f"| {e['description']} | {e['clean']} | {100 * e['restoration'].mean:.1f}% |")
    tables = ch5_rl.tables(per_seed, settings["eps"])
    t3, t4 = ch5_rl.format_tables(tables)
    print("\nSeed Table 3 (attacks on PPO)\n\n" + t3 + "\n\nSeed Table 4 (defences)\n\n" + t4)
    base = s["ppo"]
    print(f"\nGoal: worst-case interval above vanilla PPO's {base['worst']} with >= 90% of its "
          f"clean reward {base['clean'].mean:.1f}:")
    for recipe, e in s.items():
        if e["kind"] != "state" or recipe == "ppo":
            continue
        separated = e["worst"].low > base["worst"].high
        kept = e["clean"].mean >= 0.9 * base["clean"].mean
        verdict = "MET" if separated and kept else "not met"
        print(f"- {e['description']}: worst {e['worst']}, intervals "
              f"{'do not overlap' if separated else 'overlap or lie below'}; clean "
              f"{e['clean'].mean:.1f} = {100 * e['clean'].mean / base['clean'].mean:.0f}% of "
              f"PPO's -> {verdict}")


def _run_seed(seed: int, settings: dict, verbose: bool = False):
    """One training seed's results (in a worker process with ``--jobs`` > 1)."""
    start = time.perf_counter()
    result = ch5_rl.run_seed(seed, settings,
                             log=(lambda m: print(m, flush=True)) if verbose else (lambda m: None))
    result["seed"] = seed
    return seed, time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=None,
                        help="PPO iterations per recipe (default: 24)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes for the seeds (default: 2, one per core)")
    parser.add_argument("--eps", type=float, default=ch5_rl.STATE_EPS,
                        help="L-inf budget of the state attacks and of the robust recipes "
                             f"(default: {ch5_rl.STATE_EPS})")
    parser.add_argument("--out", default="rl_training.json")
    parser.add_argument("--resume", action="store_true", help="keep the seeds already in --out")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 for confidence intervals")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    settings = ch5_rl._settings(False, benchmark=True)
    if args.iterations is not None:
        settings["iterations"] = args.iterations
    if not 0 < args.eps < float("inf"):
        parser.error(f"--eps must be a finite number > 0; received {args.eps}")
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1; received {args.iterations}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0; received {args.first_seed}")
    settings["eps"] = args.eps
    done = []
    if args.resume and os.path.exists(args.out):
        try:
            with open(args.out, encoding="utf-8") as f:
                saved = json.load(f)
            saved["settings"], saved["per_seed"]
        except (ValueError, KeyError, TypeError):
            parser.error(f"--resume: {args.out} is not a results file of this script")
        if saved["settings"] != settings:
            parser.error(f"--resume: {args.out} was run with other settings "
                         f"({saved['settings']}); these are {settings}")
        done = saved["per_seed"]
        for i, r in enumerate(done):
            r.setdefault("seed", args.first_seed + i)
    if not args.skip_throughput:
        print("| rollout (PPO collection on CartPole, policy included) | env steps/s |")
        print("|---|---|")
        rows = throughput()
        single = rows[0][1]
        print(f"\n8 environments in one process: {rows[1][1] / single:.1f}x one environment's "
              f"steps/s; in worker processes: {rows[2][1] / single:.1f}x (with PGD-3: "
              f"{rows[4][1] / rows[3][1]:.1f}x and {rows[5][1] / rows[3][1]:.1f}x)", flush=True)
    todo = list(range(args.first_seed + len(done), args.first_seed + args.seeds))
    if args.jobs > 1 and len(todo) > 1:
        # one TensorFlow thread per worker: read by TensorFlow when a worker creates its context
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = "1"
        pool = concurrent.futures.ProcessPoolExecutor(
            min(args.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"))
        futures = {pool.submit(_run_seed, seed, settings): seed for seed in todo}

        def results():
            for future in concurrent.futures.as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # cancel the seeds not started; say which failed
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise SystemExit(f"seed {futures[future]} failed: {type(err).__name__}: "
                                     f"{err}") from err

        finished = results()
    else:
        pool = None
        finished = (_run_seed(seed, settings, verbose=True) for seed in todo)
    for seed, seconds, r in finished:
        done.append(r)
        done.sort(key=lambda x: x["seed"])
        print(f"seed {seed} done in {seconds:.0f} s: " + "; ".join(
            f"{k} clean {v['clean']['mean']:.0f}" + (
                "" if "pgd" not in v else
                f" noise {v['noise']['mean']:.0f} pgd {v['pgd']['mean']:.0f} "
                f"learned {v['learned']['mean']:.0f}") for k, v in r.items()
            if isinstance(v, dict)), flush=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"settings": settings, "per_seed": done}, f, indent=1)
    if pool is not None:
        pool.shutdown()
    done = [{k: v for k, v in r.items() if k != "seed"} for r in done]
    report(done, settings)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
