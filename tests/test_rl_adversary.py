"""The learned adversary (keras_secure.rl.adversary), ATLA and PPO on vector envs
(keras_secure.rl.ppo), batched evaluation, confidence intervals and the chapter-5 tables.

Closed forms: on a linear victim the director's targeted PGD ends at the corner
``s + eps * sign(w_target - w_other)`` of the L-inf ball; on the ``SignBandit`` below (state
``s ~ U[-1, 1]``, reward 1 when the victim's action is ``s > 0``) the optimal adversary pushes
towards the wrong action, and the victim ``scores = [-s, s]`` then errs exactly when
``|s| < eps``, so its expected reward per step is ``1 - eps``.
"""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from tf_agents.specs import array_spec

from _subprocess import run_python
from keras_secure.rl.adversary import (AdversaryEnv, LearnedAdversaryObservation,
                                       ObservationPerturber)
from keras_secure.rl.metrics import (evaluate_batched, evaluate_policy,
                                     mean_confidence_interval, policy_deviation)


class SignBandit(gym.Env):
    """State s ~ U[-1, 1] (1-D); reward 1 if the action equals int(s > 0); 20 steps."""

    def __init__(self, length=20):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.length = length

    def _draw(self):
        self.s = np.float32(self.np_random.uniform(-1, 1))
        return np.array([self.s], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        reward = float(int(action) == int(self.s > 0))
        self.t += 1
        return self._draw(), reward, False, self.t >= self.length, {}


def sign_victim(obs):
    import tensorflow as tf

    obs = tf.convert_to_tensor(obs, tf.float32)
    return tf.concat([-obs[:, :1], obs[:, :1]], axis=1)


def wrong_action(obs):
    """The optimal director on SignBandit: ask for the action the reward does not pay."""
    return (np.asarray(obs)[:, 0] <= 0).astype(np.int64)


def test_director_reaches_the_closed_form_corner_on_a_linear_victim():
    import keras

    w = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([0.3, -0.1], np.float32)
    victim = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    victim.layers[-1].set_weights([w, b])
    space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
    eps = 0.05
    perturber = ObservationPerturber(victim, space, eps, steps=5)
    obs = np.random.default_rng(0).normal(0, 0.3, (64, 4)).astype(np.float32)
    for target in (0, 1):
        got = perturber.perturb(obs, np.full(64, target))
        d = w[:, target] - w[:, 1 - target]
        np.testing.assert_allclose(got, obs + eps * np.sign(d), atol=1e-6)
        # the victim takes the target exactly when the corner's margin is positive
        margin = (obs @ d) + (b[target] - b[1 - target]) + eps * np.abs(d).sum()
        np.testing.assert_array_equal(perturber.victim_actions(got) == target, margin > 0)
    state = ObservationPerturber(victim, space, eps, mode="state")
    a = np.random.default_rng(1).uniform(-2, 2, (64, 4)).astype(np.float32)
    np.testing.assert_allclose(state.perturb(obs, a), obs + eps * np.clip(a, -1, 1), atol=1e-7)


def test_adversary_env_with_the_optimal_adversary_matches_the_closed_form():
    eps = 0.3
    env = AdversaryEnv(SignBandit(), sign_victim, eps)
    total, errors, steps = 0.0, 0, 0
    for episode in range(20):
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            s = float(obs[0])
            obs, reward, terminated, truncated, info = env.step(int(wrong_action(obs[None])[0]))
            errors += int(abs(s) < eps)  # the victim errs exactly inside the ball
            assert info["victim_action"] == (int(s > 0) if abs(s) >= eps else int(s <= 0))
            assert reward == -info["victim_reward"]
            total += reward
            steps += 1
            done = terminated or truncated
    assert total == -(steps - errors)
    # and the expected rate is 1 - eps (400 uniform states: within 4 standard errors)
    assert abs((steps - errors) / steps - (1 - eps)) < 4 * np.sqrt(eps * (1 - eps) / steps)


def test_learned_adversary_wrapper_equals_the_adversary_env_and_passes_checks():
    from tf_agents.environments import utils

    from keras_secure.rl.tf_agents import to_tf_agents

    eps = 0.3
    wrapped = LearnedAdversaryObservation(SignBandit(), sign_victim, wrong_action, eps)
    for env in (wrapped, AdversaryEnv(SignBandit(), sign_victim, eps),
                AdversaryEnv(SignBandit(), sign_victim, eps, mode="state"),
                AdversaryEnv(gym.make("CartPole-v1"), lambda o: sign_victim(o[:, 2:3]), 0.1)):
        check_env(env, skip_render_check=True)
        utils.validate_py_environment(to_tf_agents(env, seed=0), episodes=2)
    # the victim's reward under the wrapper equals the optimal adversary's closed form
    stats = evaluate_policy(wrapped, lambda o: int(o[0] > 0), episodes=10, seed=0)
    ref = AdversaryEnv(SignBandit(), sign_victim, eps)
    expected = []
    for episode in range(10):
        obs, _ = ref.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = ref.step(int(wrong_action(obs[None])[0]))
            total -= r
            done = terminated or truncated
        expected.append(total)
    assert stats.returns == tuple(expected)


class DiscreteObs(gym.Env):
    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)


@pytest.mark.parametrize("make, match", [
    (lambda: AdversaryEnv(SignBandit(), sign_victim, 0.0), "`eps` must be a number > 0"),
    (lambda: AdversaryEnv(SignBandit(), sign_victim, -0.1), "`eps`"),
    (lambda: LearnedAdversaryObservation(SignBandit(), sign_victim, wrong_action, 0),
     "`eps`"),
    (lambda: AdversaryEnv(DiscreteObs(), sign_victim, 0.1), "discrete one cannot"),
    (lambda: AdversaryEnv(SignBandit(), lambda o: np.zeros((len(o), 3)), 0.1),
     r"`victim` must return scores of shape \(batch, 2\)"),
    (lambda: AdversaryEnv(SignBandit(), type("Policy", (), {
        "action_spec": array_spec.BoundedArraySpec((), np.int64, 0, 2),
        "__call__": lambda self, o: sign_victim(o)})(), 0.1), "action spec must match"),
    (lambda: AdversaryEnv(SignBandit(), sign_victim, 0.1, mode="pixels"), "`mode`"),
    (lambda: LearnedAdversaryObservation(SignBandit(), sign_victim,
                                         lambda o: np.full(len(o), 5), 0.1), "`adversary`"),
    (lambda: LearnedAdversaryObservation(SignBandit(), sign_victim, 3, 0.1), "`adversary`"),
    (lambda: LearnedAdversaryObservation(SignBandit(), sign_victim,  # a float target action
                                         lambda o: np.full(len(o), 0.5), 0.1), "`adversary`"),
    (lambda: ObservationPerturber(sign_victim, gym.spaces.Discrete(4), 0.1), "Box"),
    # a NumPy victim passes the shape check but cannot be traced: refused when built
    (lambda: AdversaryEnv(SignBandit(), lambda o: np.concatenate([-o, o], 1), 0.1),
     "TensorFlow / Keras operations"),
    (lambda: AdversaryEnv(SignBandit(), lambda o: np.concatenate([-o, o], 1), 0.1,
                          mode="state"), "TensorFlow / Keras operations"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_adversary_bad_input(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_perturber_refuses_actions_outside_the_adversary_space():
    x = np.array([[0.2], [-0.4]], np.float32)
    director = ObservationPerturber(sign_victim, SignBandit().observation_space, 0.1)
    for bad in ([5, 0], [-1, 0], [0.7, 1.2], [0], [0, 1, 0], [np.nan, 0], ["a", "b"]):
        with pytest.raises(ValueError, match="`actions` must be 2 whole numbers in"):
            director.perturb(x, bad)
    np.testing.assert_array_equal(director.perturb(x, [1.0, 0]), director.perturb(x, [1, 0]))
    state = ObservationPerturber(sign_victim, SignBandit().observation_space, 0.1, mode="state")
    for bad in ([[np.nan], [0.0]], [[0.1]], np.zeros((2, 2))):
        with pytest.raises(ValueError, match="`actions` must be"):
            state.perturb(x, bad)
    np.testing.assert_allclose(state.perturb(x, [[3.0], [-1.0]]), [[0.3], [-0.5]], atol=1e-7)


def test_perturber_stays_in_the_ball_on_integer_observations():
    import tensorflow as tf

    space = gym.spaces.Box(0, 255, (3,), np.uint8)
    x = np.array([[100, 7, 250], [0, 255, 128]], np.float32)

    def victim(obs):  # action 1 wants larger pixels
        total = tf.reduce_sum(tf.convert_to_tensor(obs, tf.float32), axis=1, keepdims=True)
        return tf.concat([300.0 - total, total - 300.0], axis=1)

    for eps, limit in ((0.6, 0), (1.6, 1), (2.0, 2)):
        for mode, actions in (("state", np.ones((2, 3))), ("state", -np.ones((2, 3))),
                              ("director", [1, 0])):
            out = ObservationPerturber(victim, space, eps, mode=mode).perturb(x, actions)
            assert out.dtype == np.uint8
            assert np.abs(out.astype(np.float64) - x).max() <= limit  # never beyond eps


class Const(gym.Env):
    """Always the same observation ``value`` in ``Box(low, high)`` of ``dtype``."""

    def __init__(self, value, low, high, dtype):
        self.value = np.array(value, dtype)
        self.observation_space = gym.spaces.Box(low, high, self.value.shape, dtype)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.value.copy(), {}

    def step(self, action):
        return self.value.copy(), 1.0, False, False, {}


def test_perturbations_are_exact_in_the_observation_dtype_and_never_past_eps():
    import keras

    from keras_secure import attacks
    from keras_secure.rl import AdversarialObservation, ObservationNoise

    # values float32 cannot hold: a change of 0 must leave them exactly as they are
    big = Const([123456789, 5], -2**31, 2**31 - 1, np.int32)
    for mode, actions in (("state", np.ones((1, 2))), ("director", [1])):
        out = ObservationPerturber(sign_victim, big.observation_space, 0.5,
                                   mode=mode).perturb(big.value[None], actions)
        np.testing.assert_array_equal(out, big.value[None])  # eps < 1: nothing moves
    huge = Const([2**62 + 1, 3], -2**63, 2**63 - 1, np.int64)
    noise = ObservationNoise(huge, 0.5)
    noise.reset(seed=0)
    np.testing.assert_array_equal(noise.step(0)[0], huge.value)
    wide = Const([123456789.123, 3.0], -1e12, 1e12, np.float64)
    out = ObservationPerturber(sign_victim, wide.observation_space, 0.5,
                               mode="state").perturb(wide.value[None], np.zeros((1, 2)))
    np.testing.assert_array_equal(out, wide.value[None])
    # float32: the cast never rounds a change of eps one step past eps
    policy = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    for _ in range(40):
        value = rng.uniform(-0.8, 0.8, 2).astype(np.float32)
        env = AdversarialObservation(Const(value, -1, 1, np.float32), policy, attacks.FGSM(0.1))
        env.reset(seed=0)
        change = env.step(0)[0].astype(np.float64) - value.astype(np.float64)
        assert np.abs(change).max() <= 0.1
    # an observation outside its declared space is not clipped by more than eps
    outside = ObservationNoise(Const([5.0, -3.0], -1, 1, np.float32), 0.1)
    outside.reset(seed=0)
    assert np.abs(outside.step(0)[0] - np.array([5.0, -3.0])).max() <= 0.1 + 1e-6


def test_adversarial_observation_refuses_a_numpy_policy_when_built():
    from keras_secure import attacks
    from keras_secure.rl import AdversarialObservation

    with pytest.raises(TypeError, match="`policy_fn` must compute its scores with TensorFlow"):
        AdversarialObservation(SignBandit(), lambda o: np.concatenate([-o, o], 1),
                               attacks.FGSM(0.1))


def test_adversary_env_step_refuses_invalid_target_actions():
    env = AdversaryEnv(SignBandit(), sign_victim, 0.1)
    env.reset(seed=0)
    for bad in (0.99, 1.7, "1", True, None, np.array([1]), 2, -1):
        with pytest.raises(ValueError, match="`action` must be"):
            env.step(bad)
    for good in (1, np.int64(0), 1.0):
        env.step(good)
    state = AdversaryEnv(SignBandit(), sign_victim, 0.1, mode="state")
    state.reset(seed=0)
    with pytest.raises(ValueError, match="`action` must be an array of shape"):
        state.step(np.zeros(3))
    state.step(np.array([3.0], np.float32))  # outside [-1, 1]: clipped, as documented


def test_evaluate_batched_refuses_what_it_cannot_mean():
    def make():
        return gym.make("CartPole-v1", max_episode_steps=20)

    with pytest.raises(ValueError, match="one action per observation: 3"):
        evaluate_batched(make, lambda o: np.zeros(1, int), episodes=3)
    with pytest.raises(ValueError, match="outside the action space"):
        evaluate_batched(make, lambda o: np.full(len(o), 2), episodes=2)
    with pytest.raises(ValueError, match="outside the action space"):
        evaluate_batched(make, lambda o: np.full(len(o), 0.5), episodes=2)
    env = make()
    with pytest.raises(ValueError, match="new environment on each call"):
        evaluate_batched(lambda: env, lambda o: np.zeros(len(o), int), episodes=2)
    with pytest.raises(TypeError, match="`make_env` must be a function"):
        evaluate_batched(env, lambda o: np.zeros(len(o), int), episodes=2)
    with pytest.raises(ValueError, match="`seed`"):
        evaluate_batched(make, lambda o: np.zeros(len(o), int), episodes=2, seed=-1)
    with pytest.raises(TypeError, match="`make_env` must return a gymnasium environment"):
        evaluate_batched(lambda: None, lambda o: np.zeros(len(o), int), episodes=2)
    with pytest.raises(TypeError, match="`policy` must be callable"):
        evaluate_batched(make, 3, episodes=2)
    with pytest.raises(ValueError, match="`seed`"):
        evaluate_policy(make(), lambda o: 0, episodes=1, seed=-1)
    with pytest.raises(TypeError, match="`env` must be a gymnasium environment"):
        evaluate_policy(gym.Env, lambda o: 0, episodes=1)
    # accepted: NumPy integer seeds, boolean and whole-number float actions
    by_bool, _ = evaluate_batched(make, lambda o: o[:, 2] > 0, episodes=3, seed=np.int64(1))
    by_int, _ = evaluate_batched(make, lambda o: (o[:, 2] > 0).astype(float), episodes=3,
                                 seed=1)
    ref = evaluate_policy(make(), lambda o: int(o[2] > 0), episodes=3, seed=np.int64(1))
    assert by_bool.returns == by_int.returns == ref.returns


def test_mean_confidence_interval_refuses_what_is_not_one_number_per_seed():
    with pytest.raises(ValueError, match="one-dimensional"):
        mean_confidence_interval([[1, 2], [3, 4]])
    for values in (["a", "b"], [True, False]):
        with pytest.raises(TypeError, match="`values` must be an iterable of real numbers"):
            mean_confidence_interval(values)
    with pytest.raises(ValueError, match="too large"):
        mean_confidence_interval([1e308, 1e308, -1e308])
    for values in ([1, 2, True], 5.0, None, [1, [2]]):
        with pytest.raises(TypeError, match="`values` must be an iterable of real numbers"):
            mean_confidence_interval(values)
    ci = mean_confidence_interval(v for v in (1.0, 2.0, 3.0))  # any iterable
    assert ci.mean == 2.0 and ci.n == 3
    assert mean_confidence_interval(np.array([1, 2, 3], dtype=object)).mean == 2.0
    # small values keep their digits when printed (fractions, retention)
    assert str(mean_confidence_interval([0.001, 0.002, 0.003])) == "0.002 [-0.000484, 0.00448]"
    assert str(mean_confidence_interval([400.0, 500.0])) == "450.0 [-185.3, 1085.3]"


def test_mean_confidence_interval_against_hand_computed_values():
    ci = mean_confidence_interval([1, 2, 3, 4, 5])
    # sd = sqrt(2.5), se = sqrt(0.5), t_{0.975, 4} = 2.7764451052
    half = 2.7764451052 * np.sqrt(0.5)
    assert ci.mean == 3.0 and ci.n == 5
    assert abs(ci.low - (3 - half)) < 1e-8 and abs(ci.high - (3 + half)) < 1e-8
    two = mean_confidence_interval([10.0, 12.0])  # se = 1, t_{0.975, 1} = 12.7062047362
    assert abs(two.half_width - 12.7062047362) < 1e-8
    ninety = mean_confidence_interval([1, 2, 3, 4, 5], confidence=0.9)  # t = 2.1318467863
    assert abs(ninety.half_width - 2.1318467863 * np.sqrt(0.5)) < 1e-8
    assert ci.overlaps(two) and not mean_confidence_interval([100, 101]).overlaps(ci)
    for values, kw in (([1.0], {}), ([1.0, float("nan")], {}), ([1, 2], {"confidence": 1.0})):
        with pytest.raises(ValueError):
            mean_confidence_interval(values, **kw)


def test_evaluate_batched_equals_the_sequential_evaluation():
    def make():
        return gym.make("CartPole-v1", max_episode_steps=200)

    w = np.array([0.0, 0.0, 1.0, 0.0])  # pole angle only: falls after tens of steps

    def act(obs):
        return (np.asarray(obs) @ w > 0).astype(int)

    def shift(obs):
        return np.asarray(obs) + np.array([0.0, 0.0, 0.03, 0.0])

    stats, deviation = evaluate_batched(make, act, 6, seed=4, observe=shift)
    ref = evaluate_policy(make(), lambda o: int(act(shift(o)[None])[0]), 6, seed=4)
    assert stats.returns == ref.returns and stats.lengths == ref.lengths
    assert len(set(stats.lengths)) > 1  # episodes of different lengths ran side by side
    ref_dev = policy_deviation(make(), lambda o: int(act(o[None])[0]), shift, episodes=6,
                               seed=4)
    assert abs(deviation - ref_dev) < 1e-12
    clean, none = evaluate_batched(make, act, 3, seed=0)
    assert none is None and clean.returns == evaluate_policy(
        make(), lambda o: int(act(o[None])[0]), 3, seed=0).returns


def test_chapter5_tables_from_per_seed_results():
    from keras_secure.demo import ch5_rl

    def seed(ppo_clean, attacks, tamper, guard, drs, sa, ac, atla, bias=(300, (290, 280, 40))):
        def state(clean, a):
            return {"clean": {"mean": clean, "std": 1.0, "deviation": None},
                    **{k: {"mean": v, "std": 2.0, "deviation": 0.5}
                       for k, v in zip(ch5_rl.STATE_ATTACKS, a)}}
        return {"ppo": state(ppo_clean, attacks),
                "reward_tampering": {"clean": {"mean": tamper, "std": 0.0, "deviation": None}},
                "reward_guard": {"clean": {"mean": guard, "std": 0.0, "deviation": None}},
                "dynamic_reward_shaping": {"clean": {"mean": drs, "std": 0.0,
                                                     "deviation": None}},
                "sa_ppo": state(*sa), "adversarial_collection": state(*ac),
                "sensor_bias": state(*bias), "atla": state(*atla)}

    per_seed = [seed(400, (300, 100, 50), 10, 380, 20, (420, (400, 90, 60)),
                     (380, (370, 300, 200)), (390, (350, 250, 150))),
                seed(500, (350, 150, 100), 20, 480, 40, (500, (450, 80, 120)),
                     (450, (440, 350, 300)), (480, (420, 300, 250)))]
    out = ch5_rl.tables(per_seed)
    t3, t4 = out["table3"], out["table4"]
    assert out["seeds"] == 2
    assert [r["attack"].split(" (")[0] for r in t3] == [
        "none", "random state noise", "adversarial states", "learned adversary",
        "reward manipulation"]
    assert t3[0]["mean"] == 450 and t3[3]["mean"] == 75
    assert abs(t3[3]["retention"] - (50 / 400 + 100 / 500) / 2) < 1e-12
    half = 12.7062047362 * np.std([400, 500], ddof=1) / np.sqrt(2)
    assert abs(t3[0]["high"] - (450 + half)) < 1e-6
    rows = {r["defence"].split(" (")[0]: r for r in t4}
    assert rows["RewardGuard"]["attacked"] == 15 and rows["RewardGuard"]["defended"]["mean"] == 430
    assert abs(rows["RewardGuard"]["restoration"] - (380 / 400 + 480 / 500) / 2) < 1e-12
    # worst over attacks, per seed: PPO 50 / 100; ATLA 150 / 250
    assert rows["ATLA"]["attacked"] == 75 and rows["ATLA"]["defended"]["mean"] == 200
    assert abs(rows["ATLA"]["restoration"] - (150 / 400 + 250 / 500) / 2) < 1e-12
    assert rows["SA-PPO"]["defended"]["mean"] == 70  # (min(400, 90, 60) + min(450, 80, 120)) / 2
    assert rows["sensor-offset randomization"]["defended"]["mean"] == 40
    assert abs(rows["sensor-offset randomization"]["clean_ratio"] - (300 / 400 + 300 / 500) / 2) \
        < 1e-12
    table3, table4 = ch5_rl.format_tables(out)
    assert "| learned adversary (PA-AD director, L-inf 0.1) | 75.0 [" in table3
    # the budget is a setting (benchmarks/rl_training.py --eps): the labels follow it
    other = ch5_rl.tables(per_seed, eps=0.05)
    assert [r["attack"] for r in other["table3"][1:4]] == [
        "random state noise (L-inf 0.05)", "adversarial states (PGD on the actor, L-inf 0.05)",
        "learned adversary (PA-AD director, L-inf 0.05)"]
    assert other["table3"][1:] == [dict(r, attack=o["attack"]) for r, o in
                                   zip(t3[1:], other["table3"][1:])]


# PPO on vector envs, the learned adversary's training and ATLA: TF-Agents agents need
# TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, so this runs in a child process.
PPO_ADVERSARY = """
    import numpy as np
    import gymnasium as gym
    import tensorflow as tf
    from tf_agents.trajectories import time_step as ts

    import sys
    sys.path.insert(0, "tests")
    from test_rl_adversary import SignBandit, sign_victim, wrong_action
    from keras_secure.rl import ppo
    from keras_secure.rl.metrics import evaluate_batched

    # 1. trajectories follow TF-Agents' conventions: after LAST comes the next FIRST (reward 0,
    #    discount 1), termination has discount 0, truncation discount 1
    make = lambda: gym.make("CartPole-v1", max_episode_steps=15)
    agent = ppo.make_ppo_agent(make(), seed=0, num_epochs=1)
    rollout = ppo.VectorRollout(make, 3, seed=0)
    exp, stats = rollout.collect(agent, 60)
    st, nst = exp.step_type.numpy(), exp.next_step_type.numpy()
    r, d = exp.reward.numpy(), exp.discount.numpy()
    assert st.shape == (3, 60) and stats.steps == 180
    assert np.all(st[:, 1:] == nst[:, :-1]) and np.all(st[:, 0] == ts.StepType.FIRST)
    after_last = st == ts.StepType.LAST
    assert after_last.any() and np.all(nst[after_last] == ts.StepType.FIRST)
    assert np.all(r[after_last] == 0) and np.all(d[after_last] == 1)
    assert all(1 <= x <= 15 for x in stats.returns)
    truncated = (nst == ts.StepType.LAST) & (d == 1)
    terminated = (nst == ts.StepType.LAST) & (d == 0)
    assert truncated.any() or terminated.any()
    rollout.close()

    # 2. a PPO adversary learns the optimal director on SignBandit against a fixed victim:
    #    the victim's reward per step falls from 1 (clean) towards 1 - eps (optimal attack),
    #    below the 1 - eps / 2 of an adversary that picks targets at random
    eps = 0.5
    bandit = lambda: SignBandit(length=16)
    adversary, perturber = ppo.make_adversary(bandit(), sign_victim, eps, seed=0,
                                              attack_steps=3, learning_rate=3e-3)
    history = ppo.train_adversary(adversary, perturber, ppo.VectorRollout(bandit, 8, seed=1),
                                  iterations=12, steps=32)
    attack = ppo.learned_attack(adversary, perturber)
    victim_act = lambda o: (np.asarray(o)[:, 0] > 0).astype(int)
    stats, deviation = evaluate_batched(bandit, victim_act, 40, seed=100, observe=attack)
    per_step = stats.mean / 16
    assert per_step < 0.62, (per_step, history)
    # and it chose the wrong action where it matters (|s| < eps)
    s = np.linspace(-0.45, 0.45, 19)[:, None].astype(np.float32)
    s = s[np.abs(s[:, 0]) > 0.05]
    chosen = ppo.greedy_action_fn(adversary)(s)
    assert np.mean(chosen == wrong_action(s)) >= 0.9, chosen

    # 3. ATLA runs end to end: a victim trained against the learned adversary still solves the
    #    clean bandit, and its reward under its final adversary is bounded by the closed form
    victim = ppo.make_ppo_agent(bandit(), seed=2, learning_rate=3e-3, num_epochs=4)
    atla_adv, atla_pert = ppo.atla_train(victim, bandit, eps, rounds=2, victim_iterations=4,
                                         adversary_iterations=3, seed=2, num_envs=8, steps=32,
                                         probability=0.5, attack_steps=3, warmup_iterations=6,
                                         num_epochs=4)
    greedy = ppo.greedy_action_fn(victim)
    clean, _ = evaluate_batched(bandit, greedy, 20, seed=200)
    assert clean.mean / 16 > 0.85, clean.mean
    attacked, _ = evaluate_batched(bandit, greedy, 20, seed=200,
                                   observe=ppo.learned_attack(atla_adv, atla_pert))
    assert attacked.mean <= clean.mean
    print("PPO ADVERSARY OK", per_step, history[-3:], clean.mean, attacked.mean)
"""


@pytest.mark.slow
def test_ppo_vector_rollout_learned_adversary_and_atla():
    result = run_python(PPO_ADVERSARY, TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "PPO ADVERSARY OK" in result.stdout, result.stdout[-2000:]


def test_ppo_module_says_what_to_do_without_legacy_keras():
    result = run_python("import keras_secure.rl.ppo", unset=("TF_USE_LEGACY_KERAS",))
    assert result.returncode != 0 and "TF_USE_LEGACY_KERAS=1" in result.stderr
