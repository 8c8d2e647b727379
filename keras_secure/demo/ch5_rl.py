"""Chapter 5: reinforcement learning on CartPole with TF-Agents DQN - the seed paper's Table 3
(attacks: state perturbation and reward manipulation) and Table 4 (defences: reward guard,
dynamic reward shaping, robust policy optimization).

TF-Agents agents need ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported, which the demo
process (Keras 3) cannot have; the chapter therefore runs its experiment in a child process
(``python -m keras_secure.demo.ch5_rl``) whose environment sets it, and reads back JSON. The
child starts with the demo and runs on the second core while chapters 1-4 run here.
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


def _settings(quick: bool) -> dict:
    if quick:
        return {"steps": 400, "warmup": 200, "episodes": 2, "pgd_steps": 2, "max_steps": 100}
    return {"steps": 9000, "warmup": 1000, "episodes": 10, "pgd_steps": 5, "max_steps": 500}


# ----------------------------------------------------------------------------------------------
# child process: the experiment (TF-Agents, tf-keras)

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


def experiment(quick: bool, seed: int, log=print) -> dict:
    """Run the chapter's trainings and evaluations; returns JSON-ready results."""
    import gymnasium as gym

    from keras_secure import rl
    from keras_secure.attacks import PGD
    from keras_secure.rl.robust import adversarial_collection_env, network_scores

    settings = _settings(quick)
    episodes = settings["episodes"]

    def make():
        return gym.make(ENV_ID)

    def tampered():
        return rl.RewardTampering(make(), "flip", probability=TAMPER_PROBABILITY)

    def potential(obs):
        # upright and centred is good: in [-2, 0]
        return -abs(float(obs[2])) / 0.21 - abs(float(obs[0])) / 2.4

    attack = PGD(STATE_EPS, steps=settings["pgd_steps"], seed=seed)
    trainings = {
        "baseline": dict(make_env=make),
        "reward_tampering": dict(make_env=tampered),
        "reward_guard": dict(make_env=lambda: rl.RewardGuard(tampered(), reward_range=(0, 1))),
        "dynamic_reward_shaping": dict(
            make_env=lambda: rl.DynamicRewardShaping(tampered(), potential=potential)),
        "sa_dqn": dict(make_env=make, sa_eps=STATE_EPS),
        # ATLA-style: half the collection steps are attacked against the live Q-network
        "adversarial_collection": dict(make_env=make, collect_env=lambda env, net: (
            adversarial_collection_env(env, net, PGD(STATE_EPS, steps=3, seed=seed), 0.5,
                                       seed=seed))),
    }
    nets, timings = {}, {}
    for name, kwargs in trainings.items():
        log(f"training DQN: {name} ({settings['steps']} steps) ...")
        start = time.perf_counter()
        nets[name] = train_dqn(seed=seed, settings=settings, **kwargs)
        timings[name] = time.perf_counter() - start

    def reward(name, env=None):
        stats = rl.evaluate_policy(env or make(), _greedy(nets[name]), episodes=episodes,
                                   seed=seed, max_steps=settings["max_steps"])
        return {"mean": stats.mean, "std": stats.std}

    def attacked_env(name):
        return rl.AdversarialObservation(make(), network_scores(nets[name]), attack)

    log("evaluating the baseline under attack ...")
    clean = reward("baseline")
    noise_env = rl.ObservationNoise(make(), STATE_EPS)
    noise_env.reset(seed=seed)
    adv_env = attacked_env("baseline")
    greedy = _greedy(nets["baseline"])
    table3 = [
        {"attack": "none", **clean, "retention": 1.0, "deviation": 0.0},
        {"attack": f"random state noise (L-inf {STATE_EPS})", **reward("baseline", noise_env),
         "deviation": rl.policy_deviation(make(), greedy, noise_env.observation,
                                          episodes=min(episodes, 3), seed=seed)},
        {"attack": f"adversarial states (PGD-{settings['pgd_steps']}, L-inf {STATE_EPS})",
         **reward("baseline", adv_env),
         "deviation": rl.policy_deviation(make(), greedy, adv_env.observation,
                                          episodes=min(episodes, 3), seed=seed)},
        {"attack": f"reward manipulation (sign flips, p = {TAMPER_PROBABILITY})",
         **reward("reward_tampering"), "deviation": None},
    ]
    for row in table3[1:]:
        row["retention"] = rl.reward_retention(row["mean"], clean["mean"])
    log("evaluating the defences ...")
    table4 = [
        {"defence": "RewardGuard (known range + median/MAD repair)",
         "attack": table3[3]["attack"], "attacked": table3[3]["mean"],
         "defended": reward("reward_guard")},
        {"defence": "DynamicRewardShaping (potential -|theta|/0.21 - |x|/2.4)",
         "attack": table3[3]["attack"], "attacked": table3[3]["mean"],
         "defended": reward("dynamic_reward_shaping")},
        {"defence": f"SA-DQN (robust policy optimization, eps {STATE_EPS})",
         "attack": table3[2]["attack"], "attacked": table3[2]["mean"],
         "defended": reward("sa_dqn", attacked_env("sa_dqn")), "defended_clean": reward("sa_dqn")},
        {"defence": "adversarial training during collection (p 0.5, PGD-3)",
         "attack": table3[2]["attack"], "attacked": table3[2]["mean"],
         "defended": reward("adversarial_collection", attacked_env("adversarial_collection")),
         "defended_clean": reward("adversarial_collection")},
    ]
    for row in table4:
        row["restoration"] = rl.reward_restoration(row["defended"]["mean"], clean["mean"])
    return {"settings": settings, "env": ENV_ID, "table3": table3, "table4": table4,
            "training_seconds": timings}


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
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


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
    table3 = ("| Attack | Reward (mean ± std) | Reward retention (%) | Policy deviation (%) |\n"
              "|---|---|---|---|\n" + "\n".join(
                  f"| {r['attack']} | {_fmt(r)} | {100 * r['retention']:.1f} | "
                  + ("-" if r["deviation"] is None else f"{100 * r['deviation']:.1f}") + " |"
                  for r in results["table3"]))
    table4 = ("| Defence | Against | Reward attacked (no defence) | Reward defended | "
              "Reward restoration (%) |\n|---|---|---|---|---|\n" + "\n".join(
                  f"| {r['defence']} | {r['attack']} | {r['attacked']:.1f} | "
                  f"{_fmt(r['defended'])} | {100 * r['restoration']:.1f} |"
                  for r in results["table4"]))
    print("\nTable 3 - attacks on a DQN CartPole agent\n")
    print(table3)
    print("\nTable 4 - defences\n")
    print(table4, flush=True)
    ctx.results["chapter5_rl"] = results
    ctx.section(
        f"TF-Agents DQN agents (Q-network 64-64, Adam 5e-4, epsilon-greedy 0.05, target "
        f"network updated every 500 steps) trained for "
        f"{settings['steps']} environment steps each on {results['env']} (after "
        f"{settings['warmup']} random steps); rewards are the true environment rewards over "
        f"{settings['episodes']} seeded episodes of the greedy policy ({settings['max_steps']} "
        "steps at most). State "
        f"attacks perturb the agent's observations within L-inf {STATE_EPS}: uniform noise "
        "(ObservationNoise) or PGD against the agent's own Q-network (AdversarialObservation, "
        "Huang et al. 2017); policy deviation is the fraction of visited states whose greedy "
        "action changes. Reward manipulation: the agent is trained on RewardTampering sign "
        f"flips with probability {TAMPER_PROBABILITY}. Defences: the same tampered training "
        "behind RewardGuard or DynamicRewardShaping; SA-DQN (keras_secure.rl.robust."
        "SADqnAgent, Zhang et al. 2020) and adversarial training during collection (half the "
        "collected steps attacked with PGD-3 against the live Q-network, keras_secure.rl.robust."
        "adversarial_collection_env; Pinto et al. 2017, Zhang et al. 2021), each evaluated "
        "under the PGD attack on its own network. These results come from one training seed; "
        "benchmarks/rl_training.py compares the recipes over several. "
        "Retention = attacked / clean reward; restoration = defended / clean reward.\n\n"
        "Table 3 - attacks on a DQN CartPole agent\n\n" + table3
        + "\n\nTable 4 - defences\n\n" + table4 + "\n")


if __name__ == "__main__":
    main()
