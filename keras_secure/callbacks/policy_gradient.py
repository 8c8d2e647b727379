"""Training a classifier as a one-step policy: REINFORCE with a baseline and epsilon-greedy
exploration, as a ``fit`` callback (a loss stage of the training-step hook).

The classifier's softmax is the policy ``pi(a | x)`` over the ``K`` labels; an action is a
predicted label, drawn with epsilon-greedy exploration; the reward is ``+1`` for the true label
and ``wrong_reward`` (0 or -1) otherwise. This is the training of Zou et al. (2026), whose
robustness to white-box gradient attacks is gradient masking (see docs/training.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_secure.classifier import as_classifier, labels_from_logits
from keras_secure.distributed import replica_generator
from keras_secure.training.hook import Stage, StageCallback, hook_of, stage_name
from keras_secure.validation import check_bool, check_choice, check_number

BASELINES = ("mean", "running", "none")
EXPLOITS = ("greedy", "sample")


# --------------------------------------------------------------------------------------------
# The estimator, as functions of tensors (used by the stage; public for tests and custom loops)
# --------------------------------------------------------------------------------------------
def epsilon_greedy_actions(log_probs, epsilon, seed_generator, exploit: str = "greedy"):
    """Draw one action (label) per example from the epsilon-greedy behaviour policy.

    With probability ``epsilon`` the action is uniform over the ``K`` classes; otherwise it is
    the policy's greedy action (``exploit="greedy"``: the arg-max of ``log_probs``, first index
    on ties, :func:`keras_secure.classifier.labels_from_logits`) or a draw from the policy itself
    (``exploit="sample"``). Traceable (TensorFlow ops only); three draws from ``seed_generator``
    per call, in a fixed order: the explore coin, the uniform action, the policy sample.

    Args:
        log_probs: float tensor ``(n, K)``, log class probabilities (the policy).
        epsilon: exploration rate in [0, 1], a float or a scalar tensor.
        seed_generator: a ``keras.random.SeedGenerator``.
        exploit: ``"greedy"`` or ``"sample"``. Defaults to ``"greedy"``.

    Returns:
        int32 tensor ``(n,)`` of actions in ``[0, K - 1]``.

    Example:
        >>> gen = keras.random.SeedGenerator(0)
        >>> epsilon_greedy_actions(tf.math.log([[0.9, 0.1]]), 0.1, gen)
    """
    check_choice("exploit", exploit, EXPLOITS)
    log_probs = tf.convert_to_tensor(log_probs, tf.float32)
    n = tf.shape(log_probs)[0]
    k = tf.shape(log_probs)[1]
    explore = keras.random.uniform([n], 0.0, 1.0, seed=seed_generator) < tf.cast(epsilon,
                                                                                   tf.float32)
    uniform = tf.cast(keras.random.randint([n], 0, k, seed=seed_generator), tf.int32)
    if exploit == "greedy":
        exploited = labels_from_logits(log_probs)
    else:
        exploited = tf.cast(tf.reshape(
            keras.random.categorical(log_probs, 1, seed=seed_generator), [-1]), tf.int32)
    return tf.where(explore, uniform, exploited)


def rewards_of(actions, labels, wrong_reward: float = 0.0):
    """``+1`` where ``actions == labels``, ``wrong_reward`` elsewhere: float32 ``(n,)``.

    Example:
        >>> rewards_of(tf.constant([1, 2]), tf.constant([1, 0]), -1.0)   # [1., -1.]
    """
    correct = tf.equal(tf.cast(actions, tf.int32), tf.cast(labels, tf.int32))
    return tf.where(correct, 1.0, tf.cast(wrong_reward, tf.float32))


def behaviour_probabilities(log_probs, actions, epsilon, exploit: str = "greedy"):
    """``mu(a_i | x_i)``, the probability that :func:`epsilon_greedy_actions` draws ``a_i``:
    ``epsilon / K + (1 - epsilon) * [a_i = argmax pi]`` for ``exploit="greedy"``,
    ``epsilon / K + (1 - epsilon) * pi(a_i | x_i)`` for ``"sample"``. float32 ``(n,)``.

    Example:
        >>> behaviour_probabilities(tf.math.log([[0.9, 0.1]]), tf.constant([1]), 0.1)  # [0.05]
    """
    check_choice("exploit", exploit, EXPLOITS)
    log_probs = tf.cast(log_probs, tf.float32)
    actions = tf.cast(actions, tf.int32)
    epsilon = tf.cast(epsilon, tf.float32)
    k = tf.cast(tf.shape(log_probs)[1], tf.float32)
    if exploit == "greedy":
        exploited = tf.cast(tf.equal(actions, labels_from_logits(log_probs)), tf.float32)
    else:
        exploited = tf.exp(tf.gather(log_probs, actions, batch_dims=1))
    return epsilon / k + (1.0 - epsilon) * exploited


def policy_gradient_loss(log_probs, actions, advantages, sample_weight=None,
                         entropy_weight: float = 0.0):
    """The REINFORCE surrogate, whose gradient is the policy-gradient estimate.

    ``L = (1 / n) * sum_i w_i * ( -A_i * log pi(a_i | x_i) - entropy_weight * H(pi(. | x_i)) )``
    with ``A_i = r_i - b`` treated as a constant (no gradient flows through it), ``w_i`` the
    sample weights (1 without) and ``H`` the entropy of the policy. The mean over the ``n``
    examples of the batch matches Keras's ``"sum_over_batch_size"`` reduction of the compiled
    loss, so sample and class weights count the same way.

    Args:
        log_probs: float tensor ``(n, K)`` of log class probabilities, differentiable.
        actions: int tensor ``(n,)``, the actions taken.
        advantages: float tensor ``(n,)``, reward minus baseline.
        sample_weight: None or float tensor ``(n,)``. Defaults to None.
        entropy_weight: weight of the entropy bonus, >= 0. Defaults to 0.0.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> policy_gradient_loss(tf.math.log([[0.5, 0.5]]), tf.constant([0]), tf.constant([1.]))
    """
    log_probs = tf.cast(log_probs, tf.float32)
    advantages = tf.stop_gradient(tf.cast(advantages, tf.float32))
    chosen = tf.gather(log_probs, tf.cast(actions, tf.int32), batch_dims=1)
    per_example = -advantages * chosen
    if entropy_weight:
        entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1)
        per_example = per_example - entropy_weight * entropy
    if sample_weight is not None:
        per_example = per_example * tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
    n = tf.cast(tf.shape(per_example)[0], tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_example), n)


def _finite_check(base_loss):
    return tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(base_loss)), [
        "PolicyGradientTraining: the compiled loss of this batch is NaN or inf, so it cannot be "
        "removed from the training objective (its gradient would make the update NaN). Compile "
        "the model with a loss that is finite on its outputs, e.g. "
        "SparseCategoricalCrossentropy(from_logits=True) for a logits model. Received: "
        "compiled loss", base_loss])


def _after_check(tensor, check):
    """``tensor`` unchanged, whose gradient waits for ``check``: every variable's update then
    depends on the check, so a failing check stops the step before anything is updated."""

    @tf.custom_gradient
    def guarded(t):
        def grad(upstream):
            with tf.control_dependencies([check]):
                return tf.identity(upstream)
        with tf.control_dependencies([check]):
            return tf.identity(t), grad

    return guarded(tensor)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
class _PolicyGradientStage(Stage):
    adds_loss = True
    needs_labels = True
    log_names = ("pg_reward", "pg_epsilon", "pg_loss")

    def __init__(self, epsilon, epsilon_end, decay_steps, wrong_reward, baseline,
                 baseline_momentum, entropy_weight, exploit, importance_weighting, seed):
        super().__init__()
        self.importance_weighting = importance_weighting
        self.epsilon, self.epsilon_end, self.decay_steps = epsilon, epsilon_end, decay_steps
        self.wrong_reward, self.baseline = wrong_reward, baseline
        self.baseline_momentum, self.entropy_weight = baseline_momentum, entropy_weight
        self.exploit = exploit
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.step = None  # training steps taken with this stage (drives the epsilon schedule)
        self.running_baseline = None
        self._model = None

    def check_model(self, model):
        if getattr(model, "loss", None) is None:
            raise ValueError(
                "PolicyGradientTraining needs the model compiled with its supervised loss, "
                "e.g. model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy("
                "from_logits=True)): that loss is not trained on (the policy-gradient "
                "objective replaces it in training) but gives the validation loss and the "
                "labels' format. Received: a model compiled with loss=None")
        as_classifier(model)  # a model that is not a single-output classifier fails here
        if self.step is None:
            strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
            with strategy.scope():
                only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        aggregation=only_first, name="pg_step")
                self.running_baseline = tf.Variable(0.0, trainable=False,
                                                    aggregation=only_first,
                                                    name="pg_running_baseline")
        self._model = model

    def epsilon_at(self, step):
        """The exploration rate after ``step`` training steps (a tensor)."""
        start = tf.constant(self.epsilon, tf.float32)
        if self.epsilon_end is None:
            return start
        fraction = tf.minimum(tf.cast(step, tf.float32) / float(self.decay_steps), 1.0)
        return start + (self.epsilon_end - self.epsilon) * fraction

    def _baseline(self, rewards, weights):
        if self.baseline == "none":
            return tf.constant(0.0)
        batch_mean = tf.math.divide_no_nan(tf.reduce_sum(weights * rewards),
                                           tf.reduce_sum(weights))
        if self.baseline == "mean":
            return batch_mean
        # "running": the exponential moving average of the batch means of earlier steps (the
        # first step uses its own batch mean), updated after it is read.
        current = tf.where(self.step > 0, self.running_baseline, batch_mean)
        m = self.baseline_momentum
        self.running_baseline.assign(m * current + (1.0 - m) * batch_mean)
        return current

    def loss(self, model, x, y, y_pred, sample_weight, base_loss):
        clf = as_classifier(self._model).refresh()
        log_probs = _after_check(clf.log_probabilities(y_pred), _finite_check(base_loss))
        labels = clf.labels_tensor(y)
        n = tf.shape(log_probs)[0]
        weights = (tf.ones([n]) if sample_weight is None
                   else tf.cast(tf.reshape(sample_weight, [-1]), tf.float32))
        epsilon = self.epsilon_at(self.step)
        # under tf.distribute, one random stream per replica (identical draws otherwise)
        actions = epsilon_greedy_actions(tf.stop_gradient(log_probs), epsilon,
                                         replica_generator(self.seed_generator), self.exploit)
        rewards = rewards_of(actions, labels, self.wrong_reward)
        baseline = self._baseline(rewards, weights)
        advantages = rewards - baseline
        if self.importance_weighting:
            # truncated importance weights min(1, pi / mu), constants of the surrogate
            probs = tf.exp(tf.gather(tf.stop_gradient(log_probs), actions, batch_dims=1))
            mu = behaviour_probabilities(tf.stop_gradient(log_probs), actions, epsilon,
                                         self.exploit)
            advantages = advantages * tf.minimum(1.0, probs / mu)
        surrogate = policy_gradient_loss(log_probs, actions, advantages,
                                         sample_weight, self.entropy_weight)
        self.step.assign_add(1)
        self.record("pg_reward", rewards)
        self.record("pg_epsilon", epsilon)
        self.record("pg_loss", surrogate)
        # Replace, not add: the hook adds this term to the model's total loss, and
        # `base_loss` is its compiled part (the model's regularization losses excluded).
        # Subtracting it leaves the surrogate plus the regularization losses; the compiled
        # loss's gradient cancels exactly (1 - 1 = 0), provided it is finite.
        return surrogate - tf.cast(base_loss, tf.float32)


class PolicyGradientTraining(StageCallback):
    """Train a classifier with REINFORCE: its softmax is the policy, labels are actions chosen
    with epsilon-greedy exploration, the reward is ``+1`` for the true label and
    ``wrong_reward`` otherwise (Zou et al. 2026, Williams 1992).

    **Objective** (one batch of ``n`` examples, sample weights ``w_i``, 1 without):

    1. the policy is ``pi(. | x_i) = softmax`` of the model's logits, read through the
       classifier contract (logits, softmax, one sigmoid unit or one logit all work);
    2. an action ``a_i`` is drawn from the behaviour policy: with probability ``epsilon`` a
       uniform label, else the greedy label ``argmax pi(. | x_i)`` (``exploit="greedy"``, the
       literal epsilon-greedy rule) or a draw from ``pi`` (``exploit="sample"``);
    3. the reward is ``r_i = 1`` if ``a_i = y_i``, else ``wrong_reward``;
    4. the baseline ``b`` is the (weighted) mean reward of the batch (``"mean"``), an
       exponential moving average of earlier batches' mean rewards (``"running"``, momentum
       ``baseline_momentum``; the first batch uses its own mean) or 0 (``"none"``);
    5. the training loss is the REINFORCE surrogate ``L = (1/n) sum_i w_i [ -(r_i - b) log
       pi(a_i | x_i) - entropy_weight * H(pi(. | x_i)) ]``, with ``r_i - b`` held constant.

    ``grad L`` is the plain REINFORCE-with-exploration estimator: the actions come from the
    epsilon-greedy mixture ``mu``, but no importance weight ``pi(a | x) / mu(a | x)`` corrects for
    it, so it is not an unbiased estimate of ``grad E_pi[r]`` (it is the on-policy gradient only
    for ``exploit="sample", epsilon=0``). This is the usual estimator when a policy gradient is
    paired with epsilon-greedy exploration, and the one we read seed 002 to use; the weights
    would be large (up to ``K / epsilon``) and high-variance for rarely explored labels. The
    batch-mean baseline includes each example's own reward, which shrinks the expected gradient
    by a factor ``(n - 1) / n``; its direction is unchanged.

    **Replacement, not addition.** The policy-gradient surrogate *replaces* the compiled
    loss in training: the model must be compiled with its ordinary supervised loss (e.g.
    ``SparseCategoricalCrossentropy(from_logits=True)``), which then serves only for the
    validation loss, the labels' format and the metrics. The stage returns ``L - compiled
    loss`` to the hook, so the training objective is ``L`` plus the model's own
    regularization losses (``kernel_regularizer``, ``add_loss``) plus other stages' terms;
    the compiled loss's gradient cancels exactly. Consequently Keras's ``loss`` log in
    training is the surrogate (whose value, unlike its gradient, means little: it hovers near 0
    with a baseline), while ``val_loss`` is the compiled loss. A model compiled without a loss
    is refused; a non-finite compiled loss stops the step with an error instead of a NaN
    update.

    **Composition.** With :class:`~keras_secure.callbacks.AdversarialTraining` in the same
    ``fit`` the batch stage runs first, so the policy acts on the adversarial examples
    (``"madry"``/``"fast"``: RL-adv), on the clean and adversarial halves weighted ``1 - ratio``
    and ``ratio`` (``"mixed"``), or on the clean inputs plus TRADES's ``beta * KL`` term
    (``"trades"``); the adversary attacks the logits' log-sum-exp margin, not the surrogate.
    Refused when ``fit`` starts: a gradient stage
    (:class:`~keras_secure.callbacks.DPSGD` computes its update from the compiled loss per
    example and would silently train cross-entropy), :class:`~keras_secure.callbacks.Distillation`
    (its ``alpha * (KL - compiled loss)`` would leave ``-alpha * compiled loss`` in the
    objective), and a second ``PolicyGradientTraining``.

    **Exploration schedule.** ``epsilon`` is constant, or with ``epsilon_end`` it decays
    linearly from ``epsilon`` to ``epsilon_end`` over the first ``decay_steps`` training steps
    taken with this callback (counted in the graph, across ``fit`` calls), then stays at
    ``epsilon_end``: ``epsilon_t = epsilon + (epsilon_end - epsilon) * min(t / decay_steps,
    1)`` at step ``t = 0, 1, ...`` (the linear annealing of Mnih et al. 2015).

    Logs (running means over the epoch): ``pg_reward`` (mean reward of the sampled actions),
    ``pg_epsilon`` (the exploration rate used) and ``pg_loss`` (the surrogate ``L``).

    Args:
        epsilon: exploration rate in [0, 1] (the start of the schedule). Defaults to 0.1.
        epsilon_end: final exploration rate in [0, 1], or None for a constant ``epsilon``.
            Defaults to None.
        decay_steps: number of training steps of the linear decay, an integer >= 1; required
            with ``epsilon_end``, refused without it. Defaults to None.
        wrong_reward: reward of a wrong label, in [-1, 0]. Defaults to 0.0 (then the expected
            reward of the greedy policy is its accuracy); the issue describing seed 002 allows
            0 or -1, and the paper's abstract does not say which.
        baseline: ``"mean"``, ``"running"`` or ``"none"``. Defaults to ``"mean"``.
        baseline_momentum: momentum of the ``"running"`` baseline, in [0, 1). Defaults to 0.9.
        entropy_weight: weight of the entropy bonus, >= 0 (Williams & Peng 1991; Mnih et al.
            2016). Defaults to 0.0 (off).
        exploit: the non-exploring action, ``"greedy"`` or ``"sample"``. Defaults to
            ``"greedy"``.
        seed: seed of the action sampling (a ``keras.random.SeedGenerator``). Defaults to None.

    Raises:
        TypeError / ValueError: for an argument out of range (naming it). At ``fit``: a model
            compiled without a loss or that is not a single-output classifier, data without
            labels, or a refused composition (above).

    Example:
        >>> model = ks.models.small_cnn(seed=0)
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...               metrics=["accuracy"])
        >>> model.fit(x, y, epochs=10, callbacks=[
        ...     ks.callbacks.AdversarialTraining(ks.attacks.PGD(0.1, steps=7, value_range=(0, 1))),
        ...     PolicyGradientTraining(epsilon=0.2, epsilon_end=0.02, decay_steps=200, seed=0)])

    References:
        Williams (1992), "Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning", Machine Learning 8 (REINFORCE, baselines); Sutton & Barto
        (2018), "Reinforcement Learning: An Introduction", 2nd ed., sections 2.2-2.3
        (epsilon-greedy) and 13.3-13.4 (REINFORCE with baseline); Zou, Zhao, Aghabagherloo,
        Singelee, Degraeve & Preneel (2026), "Reinforcement Learning Disrupts Gradient-Based
        Adversarial Optimization" (seed 002); Mnih et al. (2015), "Human-level control through
        deep reinforcement learning" (linear epsilon annealing).
    """

    def __init__(self, epsilon: float = 0.1, epsilon_end: float | None = None,
                 decay_steps: int | None = None, wrong_reward: float = 0.0,
                 baseline: str = "mean", baseline_momentum: float = 0.9,
                 entropy_weight: float = 0.0, exploit: str = "greedy",
                 importance_weighting: bool = False, seed: int | None = None):
        epsilon = check_number("epsilon", epsilon, low=0.0, high=1.0)
        epsilon_end = check_number("epsilon_end", epsilon_end, low=0.0, high=1.0,
                                   allow_none=True)
        decay_steps = check_number("decay_steps", decay_steps, low=1, integer=True,
                                   allow_none=True)
        if epsilon_end is not None and decay_steps is None:
            raise ValueError("`decay_steps` is required with `epsilon_end`: the number of "
                             "training steps over which epsilon decays linearly. Received: "
                             f"epsilon_end={epsilon_end}, decay_steps=None")
        if epsilon_end is None and decay_steps is not None:
            raise ValueError("`decay_steps` needs `epsilon_end` (the rate it decays to); for a "
                             "constant rate give only `epsilon`. Received: epsilon_end=None, "
                             f"decay_steps={decay_steps}")
        wrong_reward = check_number("wrong_reward", wrong_reward, low=-1.0, high=0.0)
        check_choice("baseline", baseline, BASELINES)
        baseline_momentum = check_number("baseline_momentum", baseline_momentum, low=0.0,
                                         high=1.0, high_inclusive=False)
        entropy_weight = check_number("entropy_weight", entropy_weight, low=0.0)
        check_choice("exploit", exploit, EXPLOITS)
        importance_weighting = check_bool("importance_weighting", importance_weighting)
        seed = check_number("seed", seed, integer=True, allow_none=True)
        self.epsilon, self.epsilon_end, self.decay_steps = epsilon, epsilon_end, decay_steps
        self.wrong_reward, self.baseline = wrong_reward, baseline
        self.baseline_momentum, self.entropy_weight = baseline_momentum, entropy_weight
        self.exploit, self.importance_weighting, self.seed = exploit, importance_weighting, seed
        super().__init__(_PolicyGradientStage(epsilon, epsilon_end, decay_steps, wrong_reward,
                                              baseline, baseline_momentum, entropy_weight,
                                              exploit, importance_weighting, seed))

    def get_config(self) -> dict:
        """The constructor's arguments: ``PolicyGradientTraining(**cb.get_config())`` is an
        equal callback (with fresh sampling state and schedule).

        Example:
            >>> PolicyGradientTraining(**PolicyGradientTraining(epsilon=0.2).get_config())
        """
        return {"epsilon": self.epsilon, "epsilon_end": self.epsilon_end,
                "decay_steps": self.decay_steps, "wrong_reward": self.wrong_reward,
                "baseline": self.baseline, "baseline_momentum": self.baseline_momentum,
                "entropy_weight": self.entropy_weight, "exploit": self.exploit,
                "importance_weighting": self.importance_weighting, "seed": self.seed}

    def on_train_begin(self, logs=None):
        # By now fit has built its train function: the hook's stages are this fit's stages.
        hook = hook_of(self.model)
        stages = [] if hook is None else [s for s in hook.stages if s is not self.stage]
        for stage in stages:
            name = stage_name(stage)
            if stage.computes_gradients:
                problem = (f"{name} is a gradient stage (DPSGD): it computes the update from "
                           "the compiled loss per example, so the policy-gradient objective "
                           "would be silently ignored")
            elif isinstance(stage, _PolicyGradientStage):
                problem = ("another PolicyGradientTraining is attached: each removes the "
                           "compiled loss, so two would subtract it twice")
            elif type(stage).__name__ == "_DistillationStage":
                problem = ("Distillation mixes the compiled loss into its term (alpha * (KL - "
                           "compiled loss)), which would leave -alpha * compiled loss in the "
                           "policy-gradient objective")
            else:
                continue
            raise ValueError(f"PolicyGradientTraining cannot be combined with this fit's "
                             f"other callbacks: {problem}. Received: {name}")
