"""Chapter 5: reinforcement learning on CartPole with TF-Agents PPO - the seed paper's Table 3
(attacks: state perturbation - random noise, PGD on the policy, a learned optimal adversary -
and reward manipulation) and Table 4 (defences: RewardGuard, DynamicRewardShaping, SA-PPO,
adversarial collection, sensor-offset randomization, ATLA).

TF-Agents agents need ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, which the demo
process (Keras 3) cannot have; the chapter therefore runs its experiment in a child process
(``python -m keras_secure.demo.ch5_rl``) whose environment sets it, and reads back JSON. The
child starts with the demo and runs on the second core while chapters 1-4 run here.

:func:`train_dqn` (DQN / SA-DQN with a NumPy replay) is kept for the DQN recipes' tests and
comparisons; the chapter's tables are on PPO.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ENV_ID = "CartPole-v1"
STATE_EPS = 0.1          # L-inf radius of the state perturbations (observation units)
TAMPER_PROBABILITY = 0.6  # reward sign flips: expected reward per step 1 - 2p < 0



def _settings(quick: bool, benchmark: bool = False) -> dict:
    """The chapter's budget. Quick: one seed, a few PPO iterations of 4 x 64 steps trained
    eagerly (the agents barely learn: it shows the pipeline, not the effect sizes). Full: one
    seed, 16 iterations of 8 x 128 steps per agent (about 3 minutes on an idle 2-core machine).
    ``benchmark=True``: the budget of ``benchmarks/rl_training.py`` (24 iterations per agent,
    run for six seeds in docs/rl.md)."""
    if quick:
        return {"eps": STATE_EPS, "seeds": 1, "num_envs": 4, "steps": 64, "iterations": 3,
                "num_epochs": 1,
                "adversary_iterations": 1, "atla_warmup": 1, "atla_rounds": 1,
                "atla_victim_iterations": 2, "atla_adversary_iterations": 1,
                "episodes": 3, "max_steps": 100, "pgd_steps": 2, "director_steps": 3,
                "compiled": False}
    full = {"eps": STATE_EPS, "seeds": 1, "num_envs": 8, "steps": 128, "iterations": 16,
            "num_epochs": 10,
            "adversary_iterations": 6, "atla_warmup": 8, "atla_rounds": 2,
            "atla_victim_iterations": 4, "atla_adversary_iterations": 3,
            "episodes": 10, "max_steps": 500, "pgd_steps": 5, "director_steps": 10,
            "compiled": True}
    if benchmark:  # ATLA: 12 warm-up + 3 x 4 victim iterations = PPO's 24
        return {**full, "seeds": 5, "iterations": 24, "adversary_iterations": 8,
                "atla_warmup": 12, "atla_rounds": 3}
    return full


#: the recipes, in training order: name -> (kind, description). ``reward`` recipes are trained
#: on tampered rewards and evaluated clean; ``state`` recipes are evaluated under every state
#: attack.
RECIPES = {
    "ppo": ("state", "PPO"),
    "reward_tampering": ("reward", "PPO trained on reward sign flips"),
    "reward_guard": ("reward", "RewardGuard (known range + median/MAD repair)"),
    "dynamic_reward_shaping": ("reward",
                               "DynamicRewardShaping (potential -abs(theta)/0.21 - abs(x)/2.4)"),
    "sa_ppo": ("state", "SA-PPO (sa_eps = the attacks' budget, weight 0.1)"),
    "adversarial_collection": ("state", "adversarial collection (p 0.5, PGD-3 on the live actor)"),
    "sensor_bias": ("state", "sensor-offset randomization (one offset per episode in the "
                             "attacks' L-inf ball)"),
    "atla": ("state", "ATLA (alternating training vs the learned adversary, p 0.5)"),
}
STATE_ATTACKS = ("noise", "pgd", "learned")


def _potential(obs) -> float:
    # upright and centred is good: in [-2, 0]
    return -abs(float(obs[2])) / 0.21 - abs(float(obs[0])) / 2.4


def _env_maker(recipe: str, eps: float = STATE_EPS):
    import gymnasium as gym

    from keras_secure import rl

    def make():
        return gym.make(ENV_ID)

    def tampered():
        return rl.RewardTampering(make(), "flip", probability=TAMPER_PROBABILITY)

    return {"reward_tampering": tampered,
            "sensor_bias": lambda: rl.ObservationNoise(make(), eps, kind="bias"),
            "reward_guard": lambda: rl.RewardGuard(tampered(), reward_range=(0, 1)),
            "dynamic_reward_shaping": lambda: rl.DynamicRewardShaping(tampered(),
                                                                      potential=_potential),
            }.get(recipe, make)


def pgd_attack(scores, eps: float, steps: int, seed: int, probability: float = 1.0):
    """Batched PGD (margin loss) on ``scores`` away from the greedy action, in one graph call,
    applied to each observation with ``probability``: ``obs_batch -> obs_batch``."""
    import numpy as np
    import tensorflow as tf

    from keras_secure.attacks import PGD

    attack = PGD(eps, steps=steps, loss="margin", seed=seed)

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    def perturb(x):
        return attack.perturb(scores, x, tf.argmax(scores(x), axis=-1))

    rng = np.random.default_rng([seed, 0x9D])

    def apply(obs):
        obs = np.asarray(obs, np.float32)
        out = perturb(obs).numpy()
        if probability < 1.0:
            keep = rng.random(len(obs)) >= probability
            out = np.where(keep[:, None], obs, out)
        return out

    return apply


def noise_attack(eps: float, seed: int):
    """Uniform L-inf noise of radius ``eps`` (seeded): ``obs_batch -> obs_batch``."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x0B5])
    return lambda obs: (np.asarray(obs, np.float32)
                        + rng.uniform(-eps, eps, np.shape(obs))).astype(np.float32)


def train_recipe(recipe: str, seed: int, settings: dict, log=print):
    """Train one recipe's PPO agent; returns ``(agent, seconds, env_steps)``."""
    from keras_secure.rl import ppo

    eps = settings.get("eps", STATE_EPS)
    make = _env_maker(recipe, eps)
    start = time.perf_counter()
    agent = ppo.make_ppo_agent(make(), seed=seed, num_epochs=settings["num_epochs"],
                               sa_eps=eps if recipe == "sa_ppo" else None,
                               sa_steps=settings["pgd_steps"])
    n, steps = settings["num_envs"], settings["steps"]
    if recipe == "atla":
        ppo.atla_train(agent, make, eps, rounds=settings["atla_rounds"],
                       victim_iterations=settings["atla_victim_iterations"],
                       adversary_iterations=settings["atla_adversary_iterations"], seed=seed,
                       num_envs=n, steps=steps, probability=0.5,
                       attack_steps=settings["director_steps"],
                       warmup_iterations=settings["atla_warmup"],
                       num_epochs=settings["num_epochs"], compiled=settings["compiled"])
        iterations = settings["atla_warmup"] + settings["atla_rounds"] * (
            settings["atla_victim_iterations"] + settings["atla_adversary_iterations"])
    else:
        observe = None
        if recipe == "adversarial_collection":
            observe = pgd_attack(ppo.logits_fn(agent), eps, 3, seed, probability=0.5)
        rollout = ppo.VectorRollout(make, n, seed=seed)
        ppo.train_ppo(agent, rollout, settings["iterations"], steps, observe=observe,
                      compiled=settings["compiled"])
        rollout.close()
        iterations = settings["iterations"]
    return agent, time.perf_counter() - start, iterations * n * steps


def evaluate_recipe(recipe: str, agent, seed: int, settings: dict, log=print) -> dict:
    """Clean return (true rewards) of the greedy policy; for state recipes also the return and
    policy deviation under random noise, PGD on the agent's actor and a learned adversary
    (PA-AD director) trained against this agent. Each entry: ``{"mean", "std",
    "deviation"}``."""
    import gymnasium as gym

    from keras_secure.rl import ppo
    from keras_secure.rl.metrics import evaluate_batched

    def make():
        return gym.make(ENV_ID)

    act = ppo.greedy_action_fn(agent)
    episodes, cap = settings["episodes"], settings["max_steps"]
    eval_seed = 1000 + 100 * seed

    def measure(observe=None):
        stats, deviation = evaluate_batched(make, act, episodes, eval_seed, observe=observe,
                                            max_steps=cap)
        return {"mean": stats.mean, "std": stats.std, "deviation": deviation}

    out = {"clean": measure()}
    if RECIPES[recipe][0] != "state":
        return out
    scores = ppo.logits_fn(agent)
    eps = settings.get("eps", STATE_EPS)
    out["noise"] = measure(noise_attack(eps, eval_seed))
    out["pgd"] = measure(pgd_attack(scores, eps, settings["pgd_steps"], eval_seed))
    start = time.perf_counter()
    adversary, perturber = ppo.make_adversary(make(), scores, eps, seed=seed + 31,
                                              attack_steps=settings["director_steps"],
                                              num_epochs=settings["num_epochs"])
    rollout = ppo.VectorRollout(make, settings["num_envs"], seed=seed + 5000)
    ppo.train_adversary(adversary, perturber, rollout, settings["adversary_iterations"],
                        settings["steps"], compiled=settings["compiled"])
    rollout.close()
    out["learned"] = measure(ppo.learned_attack(adversary, perturber))
    out["learned"]["train_seconds"] = time.perf_counter() - start
    return out


def run_seed(seed: int, settings: dict, log=print, recipes=None) -> dict:
    """Train and evaluate every recipe for one training seed: ``{recipe: evaluation}`` plus
    each recipe's ``train_seconds`` and ``env_steps``."""
    results = {}
    for recipe in recipes or RECIPES:
        log(f"seed {seed}: training PPO '{recipe}' ...")
        agent, seconds, env_steps = train_recipe(recipe, seed, settings, log)
        log(f"seed {seed}: evaluating '{recipe}' ...")
        results[recipe] = evaluate_recipe(recipe, agent, seed, settings, log)
        results[recipe].update(train_seconds=seconds, env_steps=env_steps)
    return results


def _summary(values) -> dict:
    """Mean with a 95% t interval over seeds (n >= 2), else the single value."""
    from keras_secure.rl.metrics import mean_confidence_interval

    values = [float(v) for v in values]
    if len(values) >= 2:
        ci = mean_confidence_interval(values)
        return {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
    return {"mean": values[0], "low": None, "high": None, "n": 1}


def tables(per_seed: list[dict], eps: float = STATE_EPS) -> dict:
    """The seed's Tables 3 and 4 from :func:`run_seed` results over one or more seeds.

    Per seed, a recipe's ``worst`` is its lowest mean return over the state attacks; retention
    and restoration are ratios to the same seed's PPO clean return. Each reported figure is the
    mean over seeds with a 95% Student-t interval (``low``/``high``, None with one seed);
    ``std`` is the spread over evaluation episodes when there is one seed.
    """
    def per(recipe, key, field="mean"):
        return [r[recipe][key][field] for r in per_seed]

    def worst(r, recipe):
        return min(r[recipe][a]["mean"] for a in STATE_ATTACKS)

    one = len(per_seed) == 1
    clean = per("ppo", "clean")

    def row(values, extra=None, std=None):
        out = _summary(values)
        out["std"] = std if one else None
        return {**out, **(extra or {})}

    table3 = [dict(attack="none", **row(clean, std=per_seed[0]["ppo"]["clean"]["std"]),
                   retention=1.0, deviation=0.0)]
    names = {"noise": f"random state noise (L-inf {eps})",
             "pgd": f"adversarial states (PGD on the actor, L-inf {eps})",
             "learned": f"learned adversary (PA-AD director, L-inf {eps})"}
    for attack in STATE_ATTACKS:
        values = per("ppo", attack)
        table3.append(dict(attack=names[attack],
                           **row(values, std=per_seed[0]["ppo"][attack]["std"]),
                           retention=_summary([v / c for v, c in zip(values, clean)])["mean"],
                           deviation=_summary(per("ppo", attack, "deviation"))["mean"]))
    tampered = per("reward_tampering", "clean")
    table3.append(dict(attack=f"reward manipulation (sign flips, p = {TAMPER_PROBABILITY})",
                       **row(tampered, std=per_seed[0]["reward_tampering"]["clean"]["std"]),
                       retention=_summary([v / c for v, c in zip(tampered, clean)])["mean"],
                       deviation=None))
    ppo_worst = [worst(r, "ppo") for r in per_seed]
    table4 = []
    for recipe, (kind, description) in RECIPES.items():
        if recipe in ("ppo", "reward_tampering"):
            continue
        if kind == "reward":
            attacked, defended = tampered, per(recipe, "clean")
            std = per_seed[0][recipe]["clean"]["std"]
            against = table3[-1]["attack"]
        else:
            attacked, defended = ppo_worst, [worst(r, recipe) for r in per_seed]
            std = None
            against = "worst of the three state attacks"
        entry = dict(defence=description, attack=against, attacked=_summary(attacked)["mean"],
                     defended=row(defended, std=std),
                     restoration=_summary([d / c for d, c in zip(defended, clean)])["mean"],
                     defended_clean=row(per(recipe, "clean")))
        if kind == "state":
            entry["per_attack"] = {a: _summary(per(recipe, a))["mean"] for a in STATE_ATTACKS}
            entry["clean_ratio"] = _summary([d / c for d, c in
                                             zip(per(recipe, "clean"), clean)])["mean"]
        table4.append(entry)
    return {"table3": table3, "table4": table4, "seeds": len(per_seed)}


def experiment(quick: bool, seed: int, log=print) -> dict:
    """Run the chapter's trainings and evaluations (``settings["seeds"]`` training seeds from
    ``seed``); returns JSON-ready results."""
    settings = _settings(quick)
    per_seed = [run_seed(seed + k, settings, log) for k in range(settings["seeds"])]
    seconds = {r: sum(p[r]["train_seconds"] for p in per_seed) for r in RECIPES}
    steps = {r: sum(p[r]["env_steps"] for p in per_seed) for r in RECIPES}
    return {"settings": settings, "env": ENV_ID, **tables(per_seed, settings["eps"]),
            "per_seed": per_seed,
            "training_seconds": seconds,
            "env_steps_per_second": {r: steps[r] / seconds[r] for r in RECIPES}}


# ----------------------------------------------------------------------------------------------
# DQN (SA-DQN tests and comparisons)

def _make_agent(py_env, seed: int, sa_eps: float | None, settings: dict):
    import tensorflow as tf
    from tf_agents.agents.dqn import dqn_agent
    from tf_agents.networks import q_network
    from tf_agents.specs import tensor_spec
    from tf_agents.utils import common

    from keras_secure.rl.robust import SADqnAgent

    tf.keras.utils.set_random_seed(seed)  # Python, NumPy, TF (tf-keras initializers: Python's)
    time_step_spec = tensor_spec.from_spec(py_env.time_step_spec())
    action_spec = tensor_spec.from_spec(py_env.action_spec())
    net = q_network.QNetwork(time_step_spec.observation, action_spec, fc_layer_params=(64, 64))
    # Settings measured to learn CartPole within ~10k steps on this stack (a constant
    # epsilon of 0.1 with target updates every 100 steps did not, reliably).
    kwargs = dict(optimizer=tf.keras.optimizers.Adam(5e-4), epsilon_greedy=0.05,
                  target_update_period=500, gamma=0.99,
                  td_errors_loss_fn=common.element_wise_huber_loss,
                  train_step_counter=tf.Variable(0, dtype=tf.int64))
    if sa_eps is None:
        agent = dqn_agent.DqnAgent(time_step_spec, action_spec, q_network=net, **kwargs)
    else:
        agent = SADqnAgent(time_step_spec, action_spec, net, sa_eps=sa_eps, sa_weight=0.1,
                           sa_hinge=0.0, sa_steps=settings["pgd_steps"], seed=seed, **kwargs)
    agent.initialize()
    agent.train = common.function(agent.train)
    return agent, net


class _Replay:
    """Uniform replay of consecutive step pairs, in NumPy: adding a step costs microseconds
    (TF-Agents' TFUniformReplayBuffer took 1.6 ms per eager add here, its PyUniformReplayBuffer
    8 ms per sampled batch). Samples ``[batch, 2]`` trajectories, as DqnAgent trains on;
    pairs across an episode boundary are masked by DqnAgent itself, as with TF-Agents' buffers.
    """

    def __init__(self, spec, capacity: int, seed: int):
        import numpy as np
        import tensorflow as tf

        self.arrays = tf.nest.map_structure(
            lambda s: np.zeros((capacity, *s.shape), s.dtype.as_numpy_dtype), spec)
        self.flat = tf.nest.flatten(self.arrays)
        self.capacity, self.size, self.head = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, trajectory) -> None:
        import tensorflow as tf

        for array, value in zip(self.flat, tf.nest.flatten(trajectory)):
            array[self.head] = value
        self.head = (self.head + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int):
        import numpy as np
        import tensorflow as tf

        # a pair (i, i + 1) is valid unless i is the newest step (its successor is not written)
        oldest = self.head if self.size == self.capacity else 0
        start = (oldest + self.rng.integers(0, self.size - 1, batch)) % self.capacity
        index = np.stack([start, (start + 1) % self.capacity], axis=1)
        return tf.nest.map_structure(lambda a: a[index], self.arrays)


def train_dqn(make_env, seed: int, settings: dict, sa_eps: float | None = None,
              collect_env=None, init_from=None):
    """Train a TF-Agents DQN (or SA-DQN) agent; returns its Q-network.

    ``make_env()`` gives the gymnasium training environment (with any attack/defence
    wrappers); ``collect_env(env, network)``, if given, turns it into the collection
    ``PyEnvironment`` (e.g. adversarial collection against the live network); ``init_from``,
    a trained Q-network, starts the agent (and its target network) from its weights.
    """
    from tf_agents.drivers import py_driver
    from tf_agents.policies import py_tf_eager_policy, random_py_policy

    from keras_secure.rl.tf_agents import to_tf_agents

    spec_env = to_tf_agents(make_env(), seed=seed)
    agent, net = _make_agent(spec_env, seed, sa_eps, settings)
    if init_from is not None:
        net.set_weights(init_from.get_weights())
        agent._target_q_network.set_weights(init_from.get_weights())
    py_env = (collect_env(make_env(), net) if collect_env is not None
              else to_tf_agents(make_env(), seed=seed))
    replay = _Replay(agent.collect_data_spec, settings["steps"] + settings["warmup"], seed)
    random_policy = random_py_policy.RandomPyPolicy(py_env.time_step_spec(),
                                                    py_env.action_spec(), seed=seed)
    time_step = py_env.reset()
    time_step, _ = py_driver.PyDriver(py_env, random_policy, [replay.add],
                                      max_steps=settings["warmup"]).run(time_step)
    collect = py_driver.PyDriver(
        py_env, py_tf_eager_policy.PyTFEagerPolicy(agent.collect_policy, use_tf_function=True),
        [replay.add], max_steps=1)
    for _ in range(settings["steps"]):
        time_step, _ = collect.run(time_step)
        agent.train(replay.sample(64))
    return net


def _greedy(net):
    import numpy as np
    import tensorflow as tf

    act = tf.function(lambda obs: tf.argmax(net(obs, training=False)[0], axis=-1))
    return lambda obs: int(act(np.asarray(obs, np.float32)[np.newaxis])[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = experiment(args.quick, args.seed,
                         log=lambda message: print(f"PROGRESS {message}", flush=True))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


# ----------------------------------------------------------------------------------------------
# demo process: run the child and write the tables

def _fmt(stats) -> str:
    """``mean ± std`` (one seed: spread over evaluation episodes) or ``mean [low, high]``
    (several seeds: 95% t interval over seeds)."""
    if stats.get("low") is not None:
        return f"{stats['mean']:.1f} [{stats['low']:.1f}, {stats['high']:.1f}]"
    if stats.get("std") is not None:
        return f"{stats['mean']:.1f} ± {stats['std']:.1f}"
    return f"{stats['mean']:.1f}"


def format_tables(results: dict) -> tuple[str, str]:
    """Markdown of Tables 3 and 4 from :func:`experiment` / :func:`tables` results."""
    table3 = ("| Attack | Reward | Reward retention (%) | Policy deviation (%) |\n"
              "|---|---|---|---|\n" + "\n".join(
                  f"| {r['attack']} | {_fmt(r)} | {100 * r['retention']:.1f} | "
                  + ("-" if r["deviation"] is None else f"{100 * r['deviation']:.1f}") + " |"
                  for r in results["table3"]))
    table4 = ("| Defence | Against | Reward attacked (PPO) | Reward defended | "
              "Reward restoration (%) | Clean reward of the defended agent |\n"
              "|---|---|---|---|---|---|\n" + "\n".join(
                  f"| {r['defence']} | {r['attack']} | {r['attacked']:.1f} | "
                  f"{_fmt(r['defended'])} | {100 * r['restoration']:.1f} | "
                  f"{_fmt(r['defended_clean'])} |"
                  for r in results["table4"]))
    return table3, table4


def prepare(ctx) -> None:
    """Start the child process at the beginning of the demo: its experiment (imports of
    TensorFlow, tf-keras and TF-Agents, then the DQN trainings) runs on the second core while
    chapters 1-4 run in this process; :func:`run` collects its results. Its stderr goes to a
    temporary file (a pipe nobody reads until the end could fill up and block it)."""
    command = [sys.executable, "-m", "keras_secure.demo.ch5_rl", "--out",
               ctx.path("ch5_rl_results.json"), "--seed", str(ctx.seed)]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    ctx.ch5_stderr = tempfile.TemporaryFile("w+", encoding="utf-8")
    ctx.ch5_child = subprocess.Popen(command + (["--quick"] if ctx.quick else []),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=ctx.ch5_stderr, text=True, env=env)
    ctx.ch5_started = time.perf_counter()
    ctx.children.append(ctx.ch5_child)


def run(ctx) -> None:
    out = ctx.path("ch5_rl_results.json")
    if getattr(ctx, "ch5_child", None) is None:
        prepare(ctx)
    child, ctx.ch5_child = ctx.ch5_child, None
    ctx.log("the TF-Agents experiment (child process with TF_USE_LEGACY_KERAS=1) has been "
            f"running for {time.perf_counter() - ctx.ch5_started:.0f} s; its progress:")
    for line in child.stdout:
        if line.startswith("PROGRESS "):
            ctx.log("  " + line[len("PROGRESS "):].rstrip())
    code = child.wait()
    ctx.ch5_stderr.seek(0)
    stderr = ctx.ch5_stderr.read()
    ctx.ch5_stderr.close()
    if code != 0:
        raise RuntimeError(f"Chapter 5's TF-Agents experiment failed:\n{stderr[-3000:]}")
    with open(out, encoding="utf-8") as f:
        results = json.load(f)
    settings = results["settings"]
    table3, table4 = format_tables(results)
    seeds = results["seeds"]
    print(f"\nTable 3 - attacks on a PPO CartPole agent ({seeds} training seed"
          f"{'s' if seeds > 1 else ''})\n")
    print(table3)
    print("\nTable 4 - defences\n")
    print(table4, flush=True)
    ctx.results["chapter5_rl"] = results
    budget = ("a tiny quick-mode budget: the agents barely learn, so the figures show the "
              "pipeline, not the effects. " if ctx.quick else "")
    rate = results["env_steps_per_second"]["ppo"]
    ctx.section(
        f"TF-Agents PPO agents (PPOClipAgent, actor and value networks 64-64, Adam 1e-3, GAE, "
        f"{settings['num_epochs']} epochs per batch) trained on {results['env']} with "
        f"{settings['num_envs']} environments stepped together (gymnasium vector env; "
        f"{rate:.0f} environment steps/s while training plain PPO here), "
        f"{settings['iterations']} iterations of {settings['num_envs']} x {settings['steps']} "
        f"steps each. **{seeds} training seed{'s' if seeds > 1 else ''}**, {budget}"
        f"Rewards are the true environment rewards over {settings['episodes']} seeded episodes "
        f"of the greedy policy ({settings['max_steps']} steps at most); with one seed '±' is "
        "the spread over those episodes, not a confidence interval - "
        "`benchmarks/rl_training.py` runs six seeds with 95% intervals. State attacks perturb "
        f"the observations within L-inf {settings['eps']}: uniform noise, "
        f"PGD-{settings['pgd_steps']} "
        "on the agent's own actor (Huang et al. 2017), and a learned adversary: a PPO agent "
        f"trained for {settings['adversary_iterations']} iterations against this victim to "
        "minimise its return, choosing which action the victim should take while a targeted "
        f"PGD-{settings['director_steps']} finds the observation (keras_secure.rl.adversary, "
        "PA-AD, Sun et al. 2022; the learned-adversary evaluation of Zhang et al. 2021). "
        "Policy deviation is the fraction of visited states whose greedy action changes. "
        "Reward manipulation: PPO trained on RewardTampering sign flips with probability "
        f"{TAMPER_PROBABILITY}. Defences: the same tampered training behind RewardGuard or "
        "DynamicRewardShaping; SA-PPO (Zhang et al. 2020), adversarial collection (half the "
        "collected steps attacked with PGD-3 against the live actor), sensor-offset "
        "randomization (training observations carry one random offset per episode, in the "
        f"L-inf {settings['eps']} ball: on CartPole, PGD's perturbation acts as a sensor bias "
        "that "
        "walks the cart off the track) and ATLA (Zhang et al. "
        "2021: PPO alternating with the learned adversary, half the steps attacked), each "
        "evaluated under the worst of the three state attacks (its own learned adversary "
        "included). Retention = attacked / clean reward; restoration = defended / PPO's clean "
        "reward.\n\n"
        f"Table 3 - attacks on a PPO CartPole agent ({seeds} training seed"
        f"{'s' if seeds > 1 else ''})\n\n" + table3
        + "\n\nTable 4 - defences\n\n" + table4 + "\n")


if __name__ == "__main__":
    main()
