"""RL wrappers (exact rewards/observations on a fake env), the TF-Agents adapter, metrics."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from keras_secure import rl


class Walk(gym.Env):
    """Observation = [t, 0.5]; reward = 1 per step; terminates after `length` steps."""

    def __init__(self, length=5, truncate=False):
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.length, self.truncate = length, truncate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 0.5], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([float(self.t), 0.5], np.float32)
        end = self.t >= self.length
        return obs, 1.0, end and not self.truncate, end and self.truncate, {}


def rollout(env, seed=0, action=0):
    env.reset(seed=seed)
    rewards, infos, done = [], [], False
    while not done:
        _, r, terminated, truncated, info = env.step(action)
        rewards.append(r)
        infos.append(info)
        done = terminated or truncated
    return rewards, infos


def test_reward_tampering_modes_are_exact():
    assert rollout(rl.RewardTampering(Walk(), "flip", probability=1.0))[0] == [-1.0] * 5
    assert rollout(rl.RewardTampering(Walk(), "scale", 1.0, scale=3.0))[0] == [3.0] * 5
    assert rollout(rl.RewardTampering(Walk(), "constant", 1.0, value=-2.0))[0] == [-2.0] * 5
    rewards, infos = rollout(rl.RewardTampering(Walk(), "flip", 1.0, budget=2, start_step=1))
    assert rewards == [1.0, -1.0, -1.0, 1.0, 1.0]
    assert [i["reward_tampered"] for i in infos] == [False, True, True, False, False]
    assert all(i["true_reward"] == 1.0 for i in infos)
    noisy = rl.RewardTampering(Walk(), "noise", 1.0, noise_std=0.5)
    assert rollout(noisy, seed=3)[0] == rollout(noisy, seed=3)[0] != rollout(noisy, seed=4)[0]


def test_reward_tampering_probability_matches_its_rate():
    env = rl.RewardTampering(Walk(length=2000), "flip", probability=0.2)
    rewards, _ = rollout(env, seed=0)
    rate = np.mean(np.asarray(rewards) < 0)
    assert abs(rate - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 2000)


def test_wrappers_do_not_shift_the_environment_random_stream():
    base = gym.make("CartPole-v1")
    wrapped = rl.ObservationNoise(rl.RewardTampering(gym.make("CartPole-v1"), "noise", 1.0),
                                  eps=0.0)
    for seed in (0, 1):
        a, _ = base.reset(seed=seed)
        b, _ = wrapped.reset(seed=seed)
        np.testing.assert_array_equal(a, b)
        for _ in range(5):
            a = base.step(0)[0]
            b = wrapped.step(0)[0]
        np.testing.assert_array_equal(a, b)


def test_observation_noise_stays_in_its_ball():
    for kind, bound in (("linf", lambda d: np.abs(d).max()), ("l2", np.linalg.norm)):
        env = rl.ObservationNoise(Walk(), eps=0.1, kind=kind)
        env.reset(seed=0)
        deltas = [env.step(0)[0] - np.array([t, 0.5]) for t in range(1, 6)]
        assert all(0 < bound(d) <= 0.1 + 1e-6 for d in deltas)
    gauss = rl.ObservationNoise(Walk(length=4000), eps=0.2, kind="gaussian")
    gauss.reset(seed=0)
    samples = np.array([gauss.step(0)[0][1] - 0.5 for _ in range(4000)])
    assert abs(samples.std() / 0.2 - 1) < 4 / np.sqrt(2 * 4000)
    off = rl.ObservationNoise(Walk(), eps=0.1, probability=0.0)
    off.reset(seed=0)
    np.testing.assert_array_equal(off.step(0)[0], [1.0, 0.5])


def test_observation_bias_is_one_offset_per_episode():
    env = rl.ObservationNoise(Walk(length=6), eps=0.1, kind="bias")
    offsets = []
    for episode in range(3):
        first, _ = env.reset(seed=episode)
        offset = first - np.array([0.0, 0.5], np.float32)
        np.testing.assert_allclose(offset, env.bias, atol=1e-6)
        assert 0 < np.abs(offset).max() <= 0.1 + 1e-6
        for t in range(1, 7):  # the same offset on every step of the episode
            np.testing.assert_allclose(env.step(0)[0] - np.array([t, 0.5]), offset, atol=1e-6)
        offsets.append(offset)
    assert not np.allclose(offsets[0], offsets[1])  # redrawn at each reset
    again = rl.ObservationNoise(Walk(), eps=0.1, kind="bias")
    np.testing.assert_array_equal(again.reset(seed=1)[0], offsets[1] + [0.0, 0.5])  # seeded
    # per-episode probability: the fraction of biased episodes is within 4 standard errors
    half = rl.ObservationNoise(Walk(), eps=0.1, kind="bias", probability=0.3)
    half.reset(seed=0)
    biased = [half.reset()[1] is not None and half.bias is not None for _ in range(2000)]
    assert abs(np.mean(biased) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)
    off = rl.ObservationNoise(Walk(), eps=0.1, kind="bias", probability=0.0)
    np.testing.assert_array_equal(off.reset(seed=0)[0], [0.0, 0.5])
    assert off.bias is None


def test_reward_shaping_is_potential_based():
    env = rl.RewardShaping(Walk(), potential=lambda s: float(s[0]), gamma=0.9)
    rewards, infos = rollout(env)
    # F = 0.9 * t - (t - 1) for t = 1..4, and Phi(s') = 0 at termination (t = 5): F = -4
    expected = [1.0 + 0.9 * t - (t - 1) for t in range(1, 5)] + [1.0 - 4.0]
    np.testing.assert_allclose(rewards, expected)
    # with gamma = 1 the shaping telescopes to -Phi(s0) = 0 over an episode
    assert sum(rollout(rl.RewardShaping(Walk(), lambda s: float(s[0]), 1.0))[0]) == 5.0
    truncated = rl.RewardShaping(Walk(truncate=True), lambda s: float(s[0]), 1.0)
    assert sum(rollout(truncated)[0]) == 5.0 + 5.0  # truncation keeps Phi(s') = 5


@pytest.mark.parametrize("make", [
    lambda: rl.RewardTampering(gym.make("CartPole-v1"), "noise", 0.5),
    lambda: rl.ObservationNoise(gym.make("CartPole-v1"), eps=0.05),
    lambda: rl.RewardShaping(gym.make("CartPole-v1"), lambda s: -abs(float(s[2]))),
], ids=["RewardTampering", "ObservationNoise", "RewardShaping"])
def test_wrapped_envs_pass_gymnasium_checks(make):
    check_env(make(), skip_render_check=True)


def test_tf_agents_adapter_validates_and_maps_discounts():
    from tf_agents.environments import utils
    from tf_agents.trajectories import time_step as ts

    from keras_secure.rl.tf_agents import to_tf_agents

    env = to_tf_agents(rl.RewardTampering(gym.make("CartPole-v1"), "flip", 0.3), seed=0)
    utils.validate_py_environment(env, episodes=3)
    terminated = to_tf_agents(Walk(length=2), discount=0.99, seed=0)
    steps = [terminated.reset(), terminated.step(0), terminated.step(0)]
    assert [s.step_type for s in steps] == [ts.StepType.FIRST, ts.StepType.MID, ts.StepType.LAST]
    assert float(steps[1].discount) == pytest.approx(0.99) and float(steps[2].discount) == 0.0
    truncated = to_tf_agents(Walk(length=1, truncate=True), discount=0.99)
    truncated.reset()
    last = truncated.step(0)
    assert last.step_type == ts.StepType.LAST and float(last.discount) == pytest.approx(0.99)
    assert truncated.step(0).step_type == ts.StepType.FIRST  # auto reset after LAST


class NativeWalk:
    """A TF-Agents-native environment (not from gymnasium): obs [t/10, 0.5], reward 1 per step,
    terminates (discount 0) after `length` steps, or truncates (discount 1) with `truncate`."""

    @staticmethod
    def make(length=5, truncate=False):
        from tf_agents.environments import py_environment
        from tf_agents.specs import array_spec
        from tf_agents.trajectories import time_step as ts

        class Env(py_environment.PyEnvironment):
            def __init__(self):
                super().__init__(handle_auto_reset=True)
                self._obs = array_spec.BoundedArraySpec((2,), np.float32, -1.0, 1.0)
                self._act = array_spec.BoundedArraySpec((), np.int64, 0, 1)

            def observation_spec(self):
                return self._obs

            def action_spec(self):
                return self._act

            def _reset(self):
                self.t = 0
                return ts.restart(np.array([0.0, 0.5], np.float32))

            def _step(self, action):
                self.t += 1
                obs = np.array([self.t / 10, 0.5], np.float32)
                if self.t < length:
                    return ts.transition(obs, 1.0)
                return ts.truncation(obs, 1.0) if truncate else ts.termination(obs, 1.0)

        return Env()


def test_keras_secure_wrappers_apply_to_tf_agents_environments():
    from tf_agents.environments import utils, wrappers
    from tf_agents.trajectories import time_step as ts

    from keras_secure.rl.tf_agents import KerasSecureWrapper, PyEnvironmentAsGym

    env = KerasSecureWrapper(NativeWalk.make(), rl.RewardTampering, "flip", probability=1.0,
                             budget=2, seed=0)
    assert isinstance(env, wrappers.PyEnvironmentBaseWrapper)
    utils.validate_py_environment(env, episodes=2)
    env.reset()
    steps = [env.step(0) for _ in range(5)]
    assert [float(s.reward) for s in steps] == [-1.0, -1.0, 1.0, 1.0, 1.0]
    assert steps[-1].step_type == ts.StepType.LAST and float(steps[-1].discount) == 0.0
    # defences stack the same way: the guard clips the flips to the known range before it has
    # history, then repairs them with the running median (history persists across episodes)
    guarded = KerasSecureWrapper(env, rl.RewardGuard, reward_range=(0, 1))
    guarded.reset()
    assert [float(guarded.step(0).reward) for _ in range(5)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    guarded.reset()
    assert [float(guarded.step(0).reward) for _ in range(5)] == [1.0] * 5
    # truncation survives the round trip; observation wrappers change observations
    truncated = KerasSecureWrapper(NativeWalk.make(length=1, truncate=True),
                                   rl.ObservationNoise, 0.05, seed=0)
    truncated.reset()
    last = truncated.step(0)
    assert last.step_type == ts.StepType.LAST and float(last.discount) == 1.0
    assert np.abs(last.observation - [0.1, 0.5]).max() <= 0.05 + 1e-7
    assert 0 < np.abs(last.observation - [0.1, 0.5]).max()
    gym_view = PyEnvironmentAsGym(NativeWalk.make())
    check_env(gym_view, skip_render_check=True)
    assert gym_view.action_space == gym.spaces.Discrete(2)
    with pytest.raises(TypeError, match="wrapper"):
        KerasSecureWrapper(NativeWalk.make(), "RewardGuard")
    with pytest.raises(ValueError, match="probability"):
        KerasSecureWrapper(NativeWalk.make(), rl.RewardTampering, "flip", probability=2.0)


def test_metrics():
    clean = rl.evaluate_policy(Walk(), lambda obs: 0, episodes=3)
    assert clean.mean == 5.0 and clean.std == 0.0 and clean.lengths == (5, 5, 5)
    tampered = rl.RewardTampering(Walk(), "flip", 1.0)
    assert rl.evaluate_policy(tampered, lambda obs: 0, episodes=2).mean == 5.0  # true reward
    assert rl.evaluate_policy(tampered, lambda obs: 0, episodes=2, true_reward=False).mean == -5
    assert rl.reward_retention(120.0, 480.0) == 0.25
    assert rl.reward_restoration(400.0, 500.0) == 0.8
    with pytest.raises(ValueError, match="`clean`"):
        rl.reward_retention(1.0, 0.0)

    def policy(obs):
        return int(obs[1] > 0.5)

    noise = rl.ObservationNoise(Walk(), eps=0.1)
    noise.reset(seed=0)
    deviation = rl.policy_deviation(Walk(), policy, noise.observation, episodes=20)
    assert 0.3 < deviation < 0.7  # the perturbed coordinate crosses 0.5 about half the time
    assert rl.policy_deviation(Walk(), policy, lambda obs: obs) == 0.0


@pytest.mark.parametrize("make, match", [
    (lambda: rl.RewardTampering(Walk(), "invert"), "`mode`"),
    (lambda: rl.RewardTampering(Walk(), probability=1.5), "`probability`"),
    (lambda: rl.RewardTampering(Walk(), budget=-1), "`budget`"),
    (lambda: rl.ObservationNoise(Walk(), eps=-0.1), "`eps`"),
    (lambda: rl.ObservationNoise(gym.make("FrozenLake-v1"), eps=0.1), "Box observation"),
    (lambda: rl.RewardShaping(Walk(), potential=3.0), "`potential` must be callable"),
    (lambda: rl.RewardShaping(Walk(), potential=lambda a, b: 0.0), "`potential` must map"),
    (lambda: rl.RewardShaping(Walk(), potential=lambda s: float("nan")), "finite number"),
    (lambda: rl.RewardShaping(Walk(), lambda s: 0.0, gamma=1.5), "`gamma`"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


class Echo(gym.Env):
    """Observation = [t, last action]; reward = 1; 200 steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1000.0, 1000.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t, action], np.float32), 1.0, self.t >= 200, False, {}


def threshold_policy():
    """Scores [x1 - 0.55, 0.55 - x1]: action 1 at the Walk env's x1 = 0.5."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.array([[0.0, 0.0], [1.0, -1.0]], np.float32),
                                  np.array([-0.55, 0.55], np.float32)])
    return model


def test_adversarial_observation_flips_the_greedy_action():
    from keras_secure import attacks

    policy = threshold_policy()
    env = rl.AdversarialObservation(Walk(), policy, attacks.FGSM(0.1))
    env.reset(seed=0)
    obs = env.step(0)[0]
    np.testing.assert_allclose(obs, [1.0, 0.6], atol=1e-6)  # pushed across the threshold
    greedy = lambda o: int(np.argmax(policy(np.asarray(o)[None])))  # noqa: E731
    assert greedy([1.0, 0.5]) == 1 and greedy(obs) == 0
    assert rl.policy_deviation(Walk(), greedy, env.observation, episodes=2) == 1.0
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        rl.AdversarialObservation(Walk(), lambda x: x[:, :1], attacks.FGSM(0.1))
    with pytest.raises(TypeError, match="untargeted keras_secure attack"):
        rl.AdversarialObservation(Walk(), policy, "fgsm")
    with pytest.raises(ValueError, match="Box observation"):
        rl.AdversarialObservation(gym.make("FrozenLake-v1"), policy, attacks.FGSM(0.1))
    with pytest.raises(ValueError, match="probability"):
        rl.AdversarialObservation(Walk(), policy, attacks.FGSM(0.1), probability=1.5)


def test_adversarial_observation_mixes_clean_and_attacked_steps():
    from keras_secure import attacks

    env = rl.AdversarialObservation(Walk(length=400), threshold_policy(), attacks.FGSM(0.1),
                                    probability=0.3)

    def attacked_steps(seed):
        env.reset(seed=seed)
        return [abs(env.step(0)[0][1] - 0.5) > 1e-6 for _ in range(400)]

    first = attacked_steps(0)
    assert first == attacked_steps(0) != attacked_steps(1)  # seeded by reset(seed=...)
    assert abs(np.mean(first) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 400)


def test_action_perturbation():
    env = rl.ActionPerturbation(Echo(), probability=1.0)
    env.reset(seed=0)
    executed = [env.step(1)[0][1] for _ in range(200)]
    assert abs(np.mean(executed) - 0.5) < 4 * np.sqrt(0.25 / 200)
    never = rl.ActionPerturbation(Echo(), probability=0.0)
    never.reset(seed=0)
    assert all(never.step(1)[0][1] == 1 for _ in range(20))
    worst = rl.ActionPerturbation(Echo(), probability=1.0, mode="adversarial",
                                  q_fn=lambda x: np.tile([[5.0, 1.0]], (len(x), 1)))
    worst.reset(seed=0)
    assert all(worst.step(0)[0][1] == 1 for _ in range(10))  # argmin Q = action 1
    with pytest.raises((ValueError, TypeError), match="`q_fn`"):
        rl.ActionPerturbation(Echo(), mode="adversarial")


def test_reward_guard_repairs_tampered_rewards():
    tampered = rl.RewardTampering(Walk(length=300), "flip", probability=0.3)
    guard = rl.RewardGuard(tampered, reward_range=(0.0, 1.0))
    rewards, infos = rollout(guard, seed=0)
    assert min(rewards) >= 0.0
    assert all(r == 1.0 for r in rewards[3:])  # after 3 accepted rewards: repaired to the median
    assert [i["reward_repaired"] for i in infos] == [i["reward_tampered"] for i in infos]
    # without known bounds: robust statistics flag the outliers
    spikes = rl.RewardGuard(rl.RewardTampering(Walk(length=300), "constant", 0.05, value=50.0))
    rewards, infos = rollout(spikes, seed=1)
    flagged = [i["reward_repaired"] for i in infos]
    tampered_steps = [i["reward_tampered"] for i in infos]
    assert flagged[3:] == tampered_steps[3:] and max(rewards[3:]) == 1.0
    with pytest.raises(ValueError, match="`window`"):
        rl.RewardGuard(Walk(), window=2)


class Scripted(gym.Wrapper):
    """Replaces the reward of step i (1-based) by rewards[i], where given."""

    def __init__(self, env, rewards):
        super().__init__(env)
        self.script, self.t = rewards, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return obs, self.script.get(self.t, reward), terminated, truncated, info


@pytest.mark.parametrize("reward_range", [None, (0.0, 1.0), (0.5, 2.0)])
def test_reward_guard_repairs_non_finite_rewards(reward_range):
    script = {1: float("nan"), 5: float("inf"), 6: float("-inf"), 7: float("nan")}
    guard = rl.RewardGuard(Scripted(Walk(length=10), script), reward_range=reward_range)
    rewards, infos = rollout(guard, seed=0)
    # before any history: 0 clipped to the range; afterwards: the median of the true rewards (1)
    first = 0.0 if reward_range is None else float(np.clip(0.0, *reward_range))
    assert rewards == [first, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [i["reward_repaired"] for i in infos] == [t in script for t in range(1, 11)]
    # the detector's statistics never took in a non-finite value
    assert all(np.isfinite(guard._stats.history))
    # DynamicRewardShaping does not repair, but flags them and keeps its statistics clean
    shaping = rl.DynamicRewardShaping(Scripted(Walk(length=10), script), potential=lambda s: 0.0)
    _, infos = rollout(shaping, seed=0)
    assert [i["reward_anomaly"] for i in infos] == [t in script for t in range(1, 11)]
    assert all(np.isfinite(shaping._stats.history))


def test_observation_denoising():
    from keras_secure.layers import BitDepthReduction

    env = rl.ObservationDenoising(Walk(), BitDepthReduction(2, value_range=(-10.0, 10.0)))
    env.reset(seed=0)
    obs = env.step(0)[0]
    levels = np.linspace(-10, 10, 4)
    assert all(np.isclose(levels, v).any() for v in obs)
    with pytest.raises(ValueError, match="keep the shape"):
        rl.ObservationDenoising(Walk(), lambda x: x[:, :1])


@pytest.mark.parametrize("make", [
    lambda: rl.AdversarialObservation(
        gym.make("CartPole-v1"),
        __import__("keras").Sequential([__import__("keras").Input((4,)),
                                        __import__("keras").layers.Dense(2)]),
        __import__("keras_secure").attacks.FGSM(0.01)),
    lambda: rl.ActionPerturbation(gym.make("CartPole-v1"), probability=0.2),
    lambda: rl.RewardGuard(gym.make("CartPole-v1"), reward_range=(0.0, 1.0)),
], ids=["AdversarialObservation", "ActionPerturbation", "RewardGuard"])
def test_more_wrapped_envs_pass_gymnasium_checks(make):
    check_env(make(), skip_render_check=True)


def test_dynamic_reward_shaping():
    # clean rewards: the weight stays at base_weight and it is plain potential-based shaping
    clean = rl.DynamicRewardShaping(Walk(length=50), lambda s: float(s[0]), gamma=1.0)
    rewards, infos = rollout(clean)
    assert all(i["shaping_weight"] == 1.0 and not i["reward_anomaly"] for i in infos)
    assert sum(rewards) == pytest.approx(50.0)  # telescopes with gamma = 1 and Phi(s0) = 0
    # tampered rewards: anomalies raise the weight, and with gamma = 1 the dynamic shaping
    # still telescopes over an episode (policy invariance), whatever the weights were
    attacked = rl.DynamicRewardShaping(
        rl.RewardTampering(Walk(length=400), "constant", 0.3, value=-20.0),
        lambda s: float(s[0]) / 100, gamma=1.0, gain=4.0)
    rewards, infos = rollout(attacked, seed=0)
    weights = [i["shaping_weight"] for i in infos]
    assert max(weights) > 1.5 and weights[0] == 1.0
    flagged = [i["reward_anomaly"] for i in infos][5:]
    tampered = [i["reward_tampered"] for i in infos][5:]
    assert flagged == tampered
    true_total = sum(-20.0 if t else 1.0 for t in [i["reward_tampered"] for i in infos])
    assert sum(rewards) == pytest.approx(true_total, abs=1e-6)
    with pytest.raises(ValueError, match="`decay`"):
        rl.DynamicRewardShaping(Walk(), lambda s: 0.0, decay=1.0)
    with pytest.raises(TypeError, match="`potential`"):
        rl.DynamicRewardShaping(Walk(), "phi")
    check_env(rl.DynamicRewardShaping(gym.make("CartPole-v1"), lambda s: -abs(float(s[2]))),
              skip_render_check=True)


def _trajectories(observations, step_types, rewards, next_types=None):
    """A batch-major TF-Agents trajectory batch, one step per row (0 FIRST, 1 MID, 2 LAST)."""
    import tensorflow as tf
    from tf_agents.trajectories import trajectory

    n = len(rewards)
    return trajectory.Trajectory(
        step_type=tf.constant(step_types, tf.int32),
        observation=tf.constant(observations, tf.float32), action=tf.zeros([n], tf.int64),
        policy_info=(), next_step_type=tf.constant(
            np.ones(n) if next_types is None else next_types, tf.int32),
        reward=tf.constant(rewards, tf.float32), discount=tf.ones([n]))


def test_reward_retention_metric_divides_mean_episode_return():
    from keras_secure.rl.tf_agents import RewardRetentionMetric

    metric = RewardRetentionMetric(clean_return=4.0, buffer_size=2)
    # episodes of returns 2, 3 and 6 (step -> next step types; the LAST -> FIRST boundary
    # carries no reward); the buffer keeps the last two
    episodes = [[1, 1], [1, 1, 1], [2, 2, 2]]
    for rewards in episodes:
        types = [0] + [1] * (len(rewards) - 1) + [2]
        for i, reward in enumerate(rewards + [0]):
            metric(_trajectories([[0.0]], [types[i]], [reward], [types[(i + 1) % len(types)]]))
    assert float(metric.result()) == pytest.approx((3 + 6) / 2 / 4)
    metric.reset()
    assert float(metric.result()) == 0.0
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="clean_return"):
            RewardRetentionMetric(bad)
    with pytest.raises(ValueError, match="buffer_size"):
        RewardRetentionMetric(1.0, buffer_size=0)


def test_policy_deviation_metric_matches_the_closed_form():
    import keras
    import tensorflow as tf

    from keras_secure import attacks
    from keras_secure.rl.tf_agents import PolicyDeviationMetric

    # linear scores with 2 actions: FGSM-eps flips the greedy action exactly when the margin
    # |(w1 - w0) . s + b1 - b0| is below eps * ||w1 - w0||_1
    w = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 0.0]], np.float32)
    b = np.array([0.3, -0.1], np.float32)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.set_weights([w, b])
    obs = np.random.default_rng(0).normal(0, 0.5, (200, 3)).astype(np.float32)
    eps = 0.2
    d, db = w[:, 1] - w[:, 0], b[1] - b[0]
    flips = np.abs(obs @ d + db) < eps * np.abs(d).sum()
    step_types = np.ones(200, np.int32)
    step_types[:10] = 2  # LAST steps are not counted
    expected = flips[10:].mean()
    assert 0.05 < expected < 0.95

    metric = PolicyDeviationMetric(model, attacks.FGSM(eps))
    half = _trajectories(obs[:100], step_types[:100], np.zeros(100))
    metric(half)
    metric(_trajectories(obs[100:], step_types[100:], np.zeros(100)))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    # a (batch, time) trajectory is flattened the same way
    metric.reset()
    metric(tf.nest.map_structure(lambda t: tf.reshape(t, [10, 10, *t.shape[1:]]), half))
    assert float(metric.result()) == pytest.approx(flips[10:100].mean(), abs=1e-6)
    with pytest.raises(TypeError, match="attack"):
        PolicyDeviationMetric(model, attacks.FGSM(eps, targeted=True))
    with pytest.raises(TypeError, match="scores"):
        PolicyDeviationMetric("model", attacks.FGSM(eps))


def test_policy_deviation_metric_observes_a_tf_agents_driver():
    import keras
    import tensorflow as tf
    from tf_agents.drivers import dynamic_step_driver
    from tf_agents.environments import tf_py_environment
    from tf_agents.policies import random_tf_policy

    from keras_secure import attacks
    from keras_secure.rl.tf_agents import (
        PolicyDeviationMetric,
        RewardRetentionMetric,
        to_tf_agents,
    )

    env = tf_py_environment.TFPyEnvironment(to_tf_agents(gym.make("CartPole-v1"), seed=0))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    deviation = PolicyDeviationMetric(model, attacks.PGD(0.05, steps=3, seed=0))
    retention = RewardRetentionMetric(clean_return=100.0)
    policy = random_tf_policy.RandomTFPolicy(env.time_step_spec(), env.action_spec())
    driver = dynamic_step_driver.DynamicStepDriver(env, policy, [deviation, retention],
                                                   num_steps=200)
    tf.function(driver.run)()
    assert 0.0 < float(deviation.result()) < 1.0
    assert int(deviation._total) > 150
    assert 0.0 < float(retention.result()) < 1.0


@pytest.mark.parametrize("window", [3, 4, 7, 100])
def test_robust_reward_stats_equal_numpys_median_and_mad(window):
    from keras_secure.rl.wrappers import _RobustRewardStats

    rng = np.random.default_rng(window)
    stats = _RobustRewardStats(window, threshold=2.0, min_scale=1e-3)
    # continuous values, ties (rounded) and repeated constants, through the sliding window
    stream = np.concatenate([rng.normal(size=150), np.round(rng.normal(size=150)), np.ones(20)])
    for i, reward in enumerate(stream):
        stats.accept(float(reward))
        history = np.asarray(stream[max(0, i + 1 - window):i + 1])
        assert stats.history == history.tolist()
        if len(history) < 3:
            assert stats.median() is None and not stats.is_outlier(5.0)
            continue
        median = np.median(history)
        mad = np.median(np.abs(history - median))
        assert stats.median() == median and stats._median_and_mad()[1] == mad
        probe = float(rng.normal(scale=3))
        scale = max(1.4826 * mad, 1e-3)
        assert stats.is_outlier(probe) == (abs(probe - median) > 2.0 * scale)


class Pixels(gym.Env):
    """A constant uint8 'image' observation (values 1..254, away from the bounds 0 and 255)."""

    IMAGE = np.arange(1, 17, dtype=np.uint8).reshape(4, 4, 1) * 15

    def __init__(self, length=5000):
        self.observation_space = gym.spaces.Box(0, 255, (4, 4, 1), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.IMAGE.copy(), {}

    def step(self, action):
        self.t += 1
        return self.IMAGE.copy(), 0.0, self.t >= self.length, False, {}


@pytest.mark.parametrize("kind, eps", [("linf", 2.0), ("gaussian", 1.5), ("l2", 6.0)])
def test_observation_noise_on_integer_images_is_unbiased(kind, eps):
    # Zero-mean noise on an integer space must stay zero-mean: rounding the change toward zero
    # (L-inf, L2: it keeps the observation in the ball) or the value to the nearest integer
    # (Gaussian) keeps it so (the noise is symmetric); a plain cast of the value truncates
    # toward zero and shifts every pixel by about -0.5 on average.
    n = 3000
    env = rl.ObservationNoise(Pixels(n), eps=eps, kind=kind)
    env.reset(seed=0)
    obs = np.array([env.step(0)[0] for _ in range(n)])
    assert obs.dtype == np.uint8 and env.observation_space.contains(obs[0])
    deviation = obs.astype(np.float64) - Pixels.IMAGE
    # per pixel: the std of the rounded noise is at most sqrt(var(noise) + 1/12); the mean over
    # n draws then has standard error below that / sqrt(n) - allow 4.5 of them, per pixel.
    if kind == "linf":
        var = eps ** 2 / 3
    elif kind == "gaussian":
        var = eps ** 2
    else:  # uniform in the 16-d L2 ball: E[r^2] = eps^2 d / (d + 2), spread over d coordinates
        var = eps ** 2 / (16 + 2)
    se = np.sqrt(var + 1 / 12) / np.sqrt(n)
    assert np.abs(deviation.mean(axis=0)).max() < 4.5 * se, deviation.mean(axis=0).ravel()
    assert deviation.std() > 0.5  # the noise does change the pixels
    # the grand mean over all 16 pixels: a bias of 0.5 would be > 60 standard errors
    assert abs(deviation.mean()) < 4.5 * se / 4


def test_integer_observations_stay_in_the_ball_and_are_rounded_by_denoising():
    import keras

    from keras_secure import attacks

    # z = [2041, sum of pixels = 2040]: greedy action 0 with margin 1, pushed away by raising
    # every pixel. FGSM(eps) moves each pixel by exactly +eps; on uint8 pixels the change is
    # rounded toward zero, so the observation never leaves the eps ball: +0.6 changes nothing
    # (rounding to the nearest would give +1, an attack of budget 1 reported as 0.6), +1.6
    # gives +1.
    policy = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                               keras.layers.Dense(2)])
    w = np.zeros((16, 2), np.float32)
    w[:, 1] = 1.0
    policy.layers[-1].set_weights([w, np.array([2041.0, 0.0], np.float32)])  # greedy: 0
    for eps, change in ((0.6, 0), (1.6, 1)):
        env = rl.AdversarialObservation(Pixels(), policy, attacks.FGSM(eps))
        env.reset(seed=0)
        obs = env.step(0)[0]
        assert obs.dtype == np.uint8
        np.testing.assert_array_equal(obs, Pixels.IMAGE + change)
    # every noise kind with a ball stays in it on integer pixels (0.6: nothing moves)
    for kind, eps, norm in (("linf", 1.7, np.inf), ("l2", 2.5, 2), ("bias", 1.7, np.inf),
                            ("linf", 0.6, np.inf), ("bias", 0.6, np.inf)):
        noise = rl.ObservationNoise(Pixels(50), eps=eps, kind=kind)
        noise.reset(seed=0)
        for _ in range(50):
            change = noise.step(0)[0].astype(np.float64) - Pixels.IMAGE
            assert np.linalg.norm(change.ravel(), norm) <= eps + 1e-9
            if eps < 1:
                assert not change.any()
        if kind == "bias":  # the reported offset is the one applied
            np.testing.assert_array_equal(noise.bias, change)
    shift = rl.ObservationDenoising(Pixels(), lambda x: x - 0.7)
    shift.reset(seed=0)
    np.testing.assert_array_equal(shift.step(0)[0], Pixels.IMAGE - 1)  # not IMAGE - 0.7 -> -1
    clip = rl.ObservationDenoising(Pixels(), lambda x: x * 100.0)
    clip.reset(seed=0)
    np.testing.assert_array_equal(clip.step(0)[0], 255)  # clipped to the bounds, not wrapped
