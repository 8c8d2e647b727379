"""The "Dependency stack" of docs/architecture.md works: TF-Agents and TensorFlow Privacy run on
TensorFlow 2.21 despite their stale published pins, and keras_secure refuses other backends."""

import textwrap

import pytest
from _subprocess import run_python

STACK_SCRIPT = textwrap.dedent("""
    import sys
    sys.skip_tf_privacy_import = True   # tensorflow_privacy's top-level import fails on TF>=2.16
    import numpy as np
    import tensorflow as tf
    # Flower (flwr[simulation]) moves protobuf to 6.x; TF, tf-agents and TF Privacy must still run
    import flwr, google.protobuf
    assert int(google.protobuf.__version__.split(".")[0]) >= 6, google.protobuf.__version__
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib
    statement = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=60000, batch_size=256, num_epochs=60, noise_multiplier=1.1,
        delta=1e-5, used_microbatching=False)
    assert "Epsilon with each example occurring once per epoch" in statement, statement

    from tf_agents.agents.dqn import dqn_agent
    from tf_agents.environments import py_environment, utils
    from tf_agents.networks import q_network
    from tf_agents.specs import array_spec, tensor_spec
    from tf_agents.trajectories import time_step as ts

    class Walk(py_environment.PyEnvironment):
        def __init__(self):
            super().__init__(handle_auto_reset=True)
            self._obs = array_spec.BoundedArraySpec((2,), np.float32, -1.0, 1.0, name="obs")
            self._act = array_spec.BoundedArraySpec((), np.int64, 0, 1, name="action")
            self._t = 0
        def observation_spec(self): return self._obs
        def action_spec(self): return self._act
        def _reset(self):
            self._t = 0
            return ts.restart(np.zeros(2, np.float32))
        def _step(self, action):
            self._t += 1
            obs = np.full(2, 0.1 * self._t, np.float32)
            return ts.termination(obs, 1.0) if self._t >= 5 else ts.transition(obs, 0.0)

    env = Walk()
    utils.validate_py_environment(env, episodes=3)
    obs_spec = tensor_spec.from_spec(env.observation_spec())
    act_spec = tensor_spec.from_spec(env.action_spec())
    net = q_network.QNetwork(obs_spec, act_spec, fc_layer_params=(8,))
    agent = dqn_agent.DqnAgent(
        ts.time_step_spec(obs_spec), act_spec, q_network=net,
        optimizer=tf.keras.optimizers.Adam(1e-3),
        train_step_counter=tf.Variable(0, dtype=tf.int64))
    agent.initialize()
    step = ts.restart(tf.zeros([1, 2]), batch_size=1)
    action = agent.policy.action(step).action
    assert action.shape == (1,)
    print("STACK OK", statement.splitlines()[0])
""")


@pytest.mark.slow
def test_tf_agents_and_tf_privacy_work_on_this_stack():
    result = run_python(STACK_SCRIPT, TF_USE_LEGACY_KERAS="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STACK OK" in result.stdout


def test_import_refuses_other_backends():
    # Other backends need packages (jax, torch) this stack does not install, so the configured
    # backend is simulated; the guard reads it through keras.backend.backend().
    result = run_python("import keras; keras.backend.backend = lambda: 'jax'; import keras_secure")
    assert result.returncode != 0
    assert "needs the TensorFlow backend" in result.stderr
    assert "KERAS_BACKEND=tensorflow" in result.stderr
