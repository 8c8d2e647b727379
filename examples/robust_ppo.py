"""Robust PPO on CartPole with TF-Agents: three agents, each evaluated clean, under a PGD attack
on its own actor network, and under a learned adversary trained against it.

- plain PPO (``PPOClipAgent``);
- PPO trained on adversarially perturbed observations: half the collection steps are attacked
  against the live actor (``adversarial_collection_env``, ATLA-style);
- SA-PPO (``SAPPOAgent``): PPO plus the state-adversarial KL regularizer of Zhang et al. 2020.

Discrete-action PPO needs keras_secure's ``categorical_projection_net`` (TF-Agents' own fails
under NumPy 2). The evaluation uses keras_secure's TF-Agents metrics as driver observers:
``RewardRetentionMetric`` on the attacked environment and ``PolicyDeviationMetric`` on the
clean one. The learned adversary (Zhang et al. 2021; Sun et al. 2022's PA-AD director) is a
PPO agent trained with ``keras_secure.rl.ppo.train_adversary`` to minimise the victim's return,
then run as the ``LearnedAdversaryObservation`` wrapper in front of the TF-Agents environment.

TF-Agents agents need Keras 2 (tf-keras), so this script sets ``TF_USE_LEGACY_KERAS=1`` itself,
first thing, before TensorFlow is imported.

Run: .venv/bin/python examples/robust_ppo.py [--iterations 15] [--episodes 10]
[--adversary-iterations 8]
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import argparse  # noqa: E402

import gymnasium as gym  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.agents.ppo import ppo_clip_agent  # noqa: E402
from tf_agents.drivers import dynamic_episode_driver  # noqa: E402
from tf_agents.environments import tf_py_environment  # noqa: E402
from tf_agents.metrics import tf_metrics  # noqa: E402
from tf_agents.networks import actor_distribution_network, value_network  # noqa: E402
from tf_agents.replay_buffers import tf_uniform_replay_buffer  # noqa: E402
from tf_agents.utils import common  # noqa: E402

from keras_secure import attacks  # noqa: E402
from keras_secure.rl import AdversarialObservation, LearnedAdversaryObservation  # noqa: E402
from keras_secure.rl import ppo  # noqa: E402
from keras_secure.rl.robust import (  # noqa: E402
    SAPPOAgent,
    adversarial_collection_env,
    agent_scores,
    categorical_projection_net,
)
from keras_secure.rl.tf_agents import (  # noqa: E402
    PolicyDeviationMetric,
    RewardRetentionMetric,
    to_tf_agents,
)

ENV_ID, EPS = "CartPole-v1", 0.1

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--iterations", type=int, default=15, help="PPO iterations (8 episodes each)")
parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
parser.add_argument("--adversary-iterations", type=int, default=None,
                    help="PPO iterations (8 x 128 steps) of each learned adversary "
                         "(default: min(8, --iterations))")
args = parser.parse_args()
tf.get_logger().setLevel("ERROR")  # a new driver per evaluation: TF's retracing notices


def make_agent(kind: str, seed: int = 0):
    tf.keras.utils.set_random_seed(seed)
    specs = tf_py_environment.TFPyEnvironment(to_tf_agents(gym.make(ENV_ID)))
    time_step_spec, action_spec = specs.time_step_spec(), specs.action_spec()
    actor = actor_distribution_network.ActorDistributionNetwork(
        time_step_spec.observation, action_spec, fc_layer_params=(64, 64),
        discrete_projection_net=categorical_projection_net)
    value = value_network.ValueNetwork(time_step_spec.observation, fc_layer_params=(64, 64))
    kwargs = dict(optimizer=tf.keras.optimizers.Adam(1e-3), actor_net=actor, value_net=value,
                  num_epochs=10, importance_ratio_clipping=0.2, use_gae=True,
                  discount_factor=0.99, normalize_observations=False,
                  train_step_counter=tf.Variable(0, dtype=tf.int64))
    if kind == "SA-PPO":
        agent = SAPPOAgent(time_step_spec, action_spec, sa_eps=EPS, sa_weight=0.1, seed=seed,
                           **kwargs)
    else:
        agent = ppo_clip_agent.PPOClipAgent(time_step_spec, action_spec, **kwargs)
    agent.initialize()
    return agent


def collection_env(kind: str, agent, seed: int = 0):
    if kind == "PPO + adversarial collection":  # attacks what the live agent computes
        return adversarial_collection_env(gym.make(ENV_ID), agent,
                                          attacks.PGD(EPS, steps=3, seed=seed), 0.5, seed=seed)
    return to_tf_agents(gym.make(ENV_ID), seed=seed)


def train(agent, py_env, iterations: int, episodes: int = 8):
    env = tf_py_environment.TFPyEnvironment(py_env)
    buffer = tf_uniform_replay_buffer.TFUniformReplayBuffer(
        agent.collect_data_spec, batch_size=1, max_length=episodes * 500 + 1)
    driver = dynamic_episode_driver.DynamicEpisodeDriver(
        env, agent.collect_policy, observers=[buffer.add_batch], num_episodes=episodes)
    run, train_step = common.function(driver.run), common.function(agent.train)
    for _ in range(iterations):
        run()
        train_step(buffer.gather_all())
        buffer.clear()


def run_episodes(py_env, policy, observers, episodes: int):
    env = tf_py_environment.TFPyEnvironment(py_env)
    driver = dynamic_episode_driver.DynamicEpisodeDriver(env, policy, observers,
                                                         num_episodes=episodes)
    common.function(driver.run)()


rows = []
for kind in ("PPO", "PPO + adversarial collection", "SA-PPO"):
    agent = make_agent(kind)
    train(agent, collection_env(kind, agent), args.iterations)
    scores = agent_scores(agent)  # the actor's logits, after the agent's normalizer if any
    pgd = attacks.PGD(EPS, steps=5, loss="margin", seed=1)
    clean = tf_metrics.AverageReturnMetric(buffer_size=args.episodes)
    deviation = PolicyDeviationMetric(scores, pgd)
    run_episodes(to_tf_agents(gym.make(ENV_ID), seed=100), agent.policy, [clean, deviation],
                 args.episodes)
    clean_return = float(clean.result())
    retention = RewardRetentionMetric(clean_return, buffer_size=args.episodes)
    attacked = AdversarialObservation(gym.make(ENV_ID), scores, pgd)
    run_episodes(to_tf_agents(attacked, seed=100), agent.policy, [retention], args.episodes)
    adversary, perturber = ppo.make_adversary(gym.make(ENV_ID), scores, EPS, seed=1)
    rollout = ppo.VectorRollout(lambda: gym.make(ENV_ID), 8, seed=1)
    ppo.train_adversary(adversary, perturber, rollout,
                        args.adversary_iterations or min(8, args.iterations))
    rollout.close()
    learned = tf_metrics.AverageReturnMetric(buffer_size=args.episodes)
    learned_env = LearnedAdversaryObservation(gym.make(ENV_ID), scores,
                                              ppo.greedy_action_fn(adversary), EPS)
    run_episodes(to_tf_agents(learned_env, seed=100), agent.policy, [learned], args.episodes)
    rows.append((kind, clean_return, float(retention.result()) * clean_return,
                 float(retention.result()), float(deviation.result()), float(learned.result())))

print(f"CartPole-v1, {args.iterations} PPO iterations, {args.episodes} evaluation episodes, "
      f"PGD-5 L-inf eps {EPS} on each agent's own actor; learned adversary in the same ball")
print("| agent | clean return | return under PGD | reward retention | policy deviation | "
      "return under the learned adversary |")
print("|---|---|---|---|---|---|")
for kind, clean_return, attacked_return, retained, deviated, learned_return in rows:
    print(f"| {kind} | {clean_return:.1f} | {attacked_return:.1f} | {100 * retained:.1f}% | "
          f"{100 * deviated:.1f}% | {learned_return:.1f} |")
