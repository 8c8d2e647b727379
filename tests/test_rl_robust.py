"""Robust policy training on TF-Agents agents (keras_secure.rl.robust). TF-Agents agents need
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, so these run in child processes."""

import pytest
from _subprocess import run_python


def test_robust_module_says_what_to_do_without_legacy_keras():
    result = run_python("import keras_secure.rl.robust", unset=("TF_USE_LEGACY_KERAS",))
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


SA_PPO = """
    import keras
    import numpy as np
    import tensorflow as tf
    import gymnasium as gym
    from tf_agents.agents.ppo import ppo_clip_agent
    from tf_agents.drivers import dynamic_episode_driver
    from tf_agents.environments import tf_py_environment, utils
    from tf_agents.networks import actor_distribution_network, value_network
    from tf_agents.replay_buffers import tf_uniform_replay_buffer
    from tf_agents.specs import tensor_spec
    from tf_agents.utils import common

    from keras_secure import attacks
    from keras_secure.rl import evaluate_policy
    from keras_secure.rl.robust import (CategoricalProjectionNetwork, SAPPOAgent,
                                        adversarial_collection_env, agent_scores,
                                        categorical_projection_net, network_scores)
    from keras_secure.rl.tf_agents import to_tf_agents
    from keras_secure.training import kl_adversary, kl_divergence

    rng = np.random.default_rng(0)
    py_env = to_tf_agents(gym.make("CartPole-v1"), seed=0)
    ts_spec = tensor_spec.from_spec(py_env.time_step_spec())
    act_spec = tensor_spec.from_spec(py_env.action_spec())

    def raises(kind, text, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except kind as err:
            assert text in str(err), err
        else:
            raise AssertionError(f"no {kind.__name__} for {args} {kwargs}")

    # 1. the projection network: logits = features @ W + b, over (batch) or (batch, time),
    #    masked actions never chosen, and bad specs refused
    proj = CategoricalProjectionNetwork(act_spec)
    feats = rng.normal(size=(5, 3)).astype(np.float32)
    dist, _ = proj(tf.constant(feats), outer_rank=1)
    kernel, bias = proj.get_weights()
    np.testing.assert_allclose(dist.logits_parameter().numpy(), feats @ kernel + bias, atol=1e-5)
    dist, _ = proj(tf.constant(feats.reshape(1, 5, 3)), outer_rank=2)
    assert dist.logits_parameter().shape == (1, 5, 2) and dist.sample().dtype == tf.int64
    dist, _ = proj(tf.constant(feats), outer_rank=1, mask=tf.constant([[0, 1]] * 5))
    assert (dist.sample(50, seed=0).numpy() == 1).all()
    bounded = tensor_spec.BoundedTensorSpec
    raises(TypeError, "integer", CategoricalProjectionNetwork, bounded((), tf.float32, 0, 1))
    raises(ValueError, "same number", CategoricalProjectionNetwork,
           bounded((2,), tf.int64, [0, 0], [1, 2]))
    raises(ValueError, "minimum 0", CategoricalProjectionNetwork, bounded((), tf.int64, 1, 3))
    raises(ValueError, "logits_init_output_factor", CategoricalProjectionNetwork, act_spec, 0.0)

    # 2. a linear PPO actor: network_scores gives obs @ w + b
    def nets(hidden=()):
        actor = actor_distribution_network.ActorDistributionNetwork(
            ts_spec.observation, act_spec, fc_layer_params=hidden,
            discrete_projection_net=categorical_projection_net)
        value = value_network.ValueNetwork(ts_spec.observation, fc_layer_params=hidden)
        actor.create_variables()
        value.create_variables()
        return actor, value

    actor, value = nets()
    w = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([0.3, -0.1], np.float32)
    actor.set_weights([w, b])
    obs = rng.normal(0, 0.3, (16, 4)).astype(np.float32)
    scores = network_scores(actor)
    np.testing.assert_allclose(scores(tf.constant(obs)).numpy(), obs @ w + b, atol=1e-5)

    # 3. SA-PPO on the linear 2-action actor, behind PPO's observation normalizer fitted to
    #    shifted, scaled data: agent_scores computes what the policy does. The logit gap stays
    #    linear in the raw state and KL(p || q) is convex in it, so the KL adversary's sign
    #    ascent ends at a corner s +- eps * sign(w1 - w0) of the raw-unit ball
    def agent(cls, **kw):
        kw = {"num_epochs": 2, **kw}
        a = cls(ts_spec, act_spec, optimizer=tf.keras.optimizers.Adam(1e-3), actor_net=actor,
                value_net=value, train_step_counter=tf.Variable(0, dtype=tf.int64), **kw)
        a.initialize()
        return a

    eps = 0.05
    sa = agent(SAPPOAgent, sa_eps=eps, sa_weight=0.5, sa_steps=5, seed=0)
    plain = agent(ppo_clip_agent.PPOClipAgent)
    fit = tf.constant(rng.normal(0.2, 0.5, (1, 256, 4)), tf.float32)
    for a in (sa, plain):
        a.update_observation_normalizer(fit)
    scores = agent_scores(sa)
    n = len(obs)
    time_steps = ts_spec._replace(
        step_type=tf.ones([n], tf.int32), reward=tf.zeros([n]), discount=tf.ones([n]),
        observation=tf.constant(obs))
    policy_logits = sa.collect_policy.distribution(time_steps).action.logits_parameter()
    np.testing.assert_allclose(scores(tf.constant(obs)).numpy(), policy_logits.numpy(),
                               atol=1e-5)
    assert not np.allclose(policy_logits.numpy(), obs @ w + b, atol=0.05)  # it normalizes

    adv = kl_adversary(scores, tf.constant(obs), eps, 5, 2.5 * eps / 5,
                       seed_generator=keras.random.SeedGenerator(0)).numpy()
    direction = np.sign(w[:, 1] - w[:, 0])
    side = np.sign((adv - obs) @ direction)
    np.testing.assert_allclose(adv - obs, eps * side[:, None] * direction, atol=1e-6)

    def kl_at(points):
        logp = tf.nn.log_softmax(scores(tf.constant(obs)))
        return kl_divergence(logp, tf.nn.log_softmax(scores(tf.constant(points)))).numpy()

    chosen = kl_at(adv)
    corners = [kl_at(obs + s * eps * direction) for s in (1.0, -1.0)]
    assert (chosen > 0).all() and (chosen <= np.maximum(*corners) + 1e-6).all()

    # 4. SA-PPO's loss is PPOClipAgent's loss + weight * mean KL at those points
    args = (time_steps, tf.constant(rng.integers(0, 2, n)), tf.constant(np.log([0.5] * n),
            tf.float32), tf.constant(rng.normal(size=n), tf.float32),
            tf.constant(rng.normal(size=n), tf.float32), {"logits": tf.zeros([n, 2])},
            tf.ones([n]), tf.Variable(0, dtype=tf.int64), False)
    sa_loss = float(sa.get_loss(*args).loss)
    plain_loss = float(plain.get_loss(*args).loss)
    expected = 0.5 * chosen.mean()
    assert abs(sa_loss - plain_loss - expected) < 1e-5, (sa_loss, plain_loss, expected)
    raises(TypeError, "DqnAgent or PPOAgent", agent_scores, actor)
    raises(ValueError, "sa_eps", SAPPOAgent, ts_spec, act_spec, sa_eps=0.0, actor_net=actor,
           value_net=value, optimizer=tf.keras.optimizers.Adam())
    raises(ValueError, "sa_norm", SAPPOAgent, ts_spec, act_spec, sa_eps=0.1, sa_norm="l1",
           actor_net=actor, value_net=value, optimizer=tf.keras.optimizers.Adam())

    # 5. PPO with the projection network learns CartPole; SA-PPO with adversarial collection
    #    against the live actor trains on Acrobot
    def train(agent, py_env, iterations, episodes):
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

    def greedy(actor):
        scores = network_scores(actor)
        return lambda o: int(np.argmax(scores(tf.constant(o[None], tf.float32))[0]))

    tf.keras.utils.set_random_seed(0)  # Python, NumPy and TF seeds (tf-keras initializers)
    actor, value = nets((64, 64))
    ppo = agent(ppo_clip_agent.PPOClipAgent, num_epochs=10, importance_ratio_clipping=0.2,
                use_gae=True, discount_factor=0.99, normalize_observations=False)
    before = evaluate_policy(gym.make("CartPole-v1"), greedy(actor), episodes=5).mean
    train(ppo, to_tf_agents(gym.make("CartPole-v1"), seed=0), iterations=10, episodes=8)
    after = evaluate_policy(gym.make("CartPole-v1"), greedy(actor), episodes=5).mean
    assert after > 150 and after > 3 * before, (before, after)

    acrobot = to_tf_agents(gym.make("Acrobot-v1"), seed=0)
    ts_spec = tensor_spec.from_spec(acrobot.time_step_spec())
    act_spec = tensor_spec.from_spec(acrobot.action_spec())
    actor, value = nets((32,))
    sa = agent(SAPPOAgent, sa_eps=0.05, seed=0)
    collect = adversarial_collection_env(gym.make("Acrobot-v1"), sa,
                                         attacks.PGD(0.05, steps=2, seed=0), 0.5, seed=0)
    utils.validate_py_environment(collect, episodes=1)
    train(sa, collect, iterations=2, episodes=1)
    assert all(np.isfinite(v).all() for v in actor.get_weights())
    print("SA-PPO OK", before, after)
"""


@pytest.mark.slow
@pytest.mark.parametrize("code, marker", [(SA_DQN, "SA-DQN OK"), (SA_PPO, "SA-PPO OK")],
                         ids=["sa_dqn_and_robust_collection", "ppo_projection_and_sa_ppo"])
def test_robust_training_recipes(code, marker):
    result = run_python(code, TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert marker in result.stdout, result.stdout[-2000:]


# Demo chapter 5 (now on PPO): its tables are tested from per-seed results in
# tests/test_rl_adversary.py (test_chapter5_tables_from_per_seed_results), and its batched
# evaluation against the sequential one (test_evaluate_batched_equals_the_sequential_evaluation).
