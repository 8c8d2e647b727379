"""Robust policy training on TF-Agents agents (keras_secure.rl.robust). TF-Agents agents need
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, so these run in child processes."""

import os
import subprocess
import sys
import textwrap

import pytest


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def test_robust_module_says_what_to_do_without_legacy_keras():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    result = subprocess.run([sys.executable, "-c", "import keras_secure.rl.robust"],
                            capture_output=True, text=True, timeout=300,
                            env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr and "before" in result.stderr


SA_DQN = """
    import numpy as np
    import tensorflow as tf
    import gymnasium as gym
    from tf_agents.agents.dqn import dqn_agent
    from tf_agents.environments import utils
    from tf_agents.networks import q_network
    from tf_agents.specs import tensor_spec
    from tf_agents.trajectories import trajectory

    from keras_secure import attacks
    from keras_secure.demo.ch5_rl import train_dqn
    from keras_secure.rl.robust import (SADqnAgent, adversarial_collection_env, network_scores,
                                        noisy_collection_env)
    from keras_secure.rl.tf_agents import to_tf_agents

    py_env = to_tf_agents(gym.make("CartPole-v1"), seed=0)
    ts_spec = tensor_spec.from_spec(py_env.time_step_spec())
    act_spec = tensor_spec.from_spec(py_env.action_spec())

    def agent(cls, **kw):
        net = q_network.QNetwork(ts_spec.observation, act_spec, fc_layer_params=())
        net.create_variables()
        w = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [0.0, 1.0]], np.float32)
        net.set_weights([w, np.array([0.3, -0.1], np.float32)])
        a = cls(ts_spec, act_spec, net, tf.keras.optimizers.SGD(0.1),
                train_step_counter=tf.Variable(0, dtype=tf.int64), **kw)
        a.initialize()
        return a, w, np.array([0.3, -0.1])

    # 1. the regulariser against its closed form: Q is linear, so the worst margin in the L-inf
    #    ball is (w_o - w_*) . s + (b_o - b_*) + eps * ||w_o - w_*||_1 (2 actions)
    eps, hinge = 0.05, 1.0
    sa, w, b = agent(SADqnAgent, sa_eps=eps, sa_weight=0.5, sa_steps=20, sa_hinge=hinge, seed=0)
    obs = np.random.default_rng(0).normal(0, 0.3, (32, 4)).astype(np.float32)
    q = obs @ w + b
    star = q.argmax(1)
    d = w[:, 1 - star].T - w[:, star].T
    margin = (d * obs).sum(1) + (b[1 - star] - b[star]) + eps * np.abs(d).sum(1)
    expected = np.maximum(margin, -hinge).mean()
    got = float(sa.sa_regularizer(tf.constant(obs)))
    assert abs(got - expected) < 1e-4, (got, expected)

    # 2. the SA loss is DqnAgent's loss + weight * regulariser on the same experience
    plain, _, _ = agent(dqn_agent.DqnAgent)
    n = 32
    experience = trajectory.Trajectory(
        step_type=tf.constant([[1, 1]] * n, tf.int32), observation=tf.constant(
            np.stack([obs, obs + 0.01], axis=1)),
        action=tf.constant(np.stack([star, star], 1).astype(np.int64)),
        policy_info=(), next_step_type=tf.constant([[1, 1]] * n, tf.int32),
        reward=tf.ones([n, 2]), discount=tf.ones([n, 2]))
    sa_loss = float(sa._loss(experience).loss)
    plain_loss = float(plain._loss(experience).loss)
    assert abs(sa_loss - (plain_loss + 0.5 * expected)) < 1e-3, (sa_loss, plain_loss, expected)

    # 3. robust collection environments validate and stay in the eps ball
    adv = adversarial_collection_env(gym.make("CartPole-v1"), sa._q_network,
                                     attacks.PGD(eps, steps=3, seed=0), probability=1.0, seed=0)
    utils.validate_py_environment(adv, episodes=2)
    clean = to_tf_agents(gym.make("CartPole-v1"), seed=3)
    adv = adversarial_collection_env(gym.make("CartPole-v1"), sa._q_network,
                                     attacks.PGD(eps, steps=3, seed=0), probability=1.0, seed=3)
    first_clean, first_adv = clean.reset().observation, adv.reset().observation
    gap = np.abs(first_adv - first_clean).max()
    assert 0 < gap <= eps + 1e-6, gap
    scores = network_scores(sa._q_network)(tf.constant(obs))
    np.testing.assert_allclose(scores.numpy(), q, atol=1e-5)
    noisy = noisy_collection_env(gym.make("CartPole-v1"), 0.05, seed=0)
    utils.validate_py_environment(noisy, episodes=2)

    # 4. SA-DQN trains end to end in a TF-Agents loop, on CartPole and on Acrobot
    settings = {"steps": 150, "warmup": 100, "pgd_steps": 2}
    for env_id in ("CartPole-v1", "Acrobot-v1"):
        net = train_dqn(lambda: gym.make(env_id), seed=0, settings=settings, sa_eps=0.05)
        assert all(np.isfinite(v).all() for v in net.get_weights())
    # adversarial collection against the live network (ATLA-style) in the same loop
    net = train_dqn(lambda: gym.make("Acrobot-v1"), seed=0, settings=settings,
                    collect_env=lambda env, net: adversarial_collection_env(
                        env, net, attacks.FGSM(0.05), probability=0.5, seed=0))
    assert all(np.isfinite(v).all() for v in net.get_weights())
    print("SA-DQN OK", got, expected)
"""


@pytest.mark.slow
def test_sa_dqn_regularizer_loss_and_robust_collection():
    result = _run(SA_DQN, TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SA-DQN OK" in result.stdout
