"""Ghost clipping's convolution and Dense regimes: per-example norms and per-example gradients
from ``keras_secure.privacy.ghost`` equal those of a slow loop over single examples, for
several layer shapes (strides, padding valid/same/causal, dilation, groups, channels first,
bias or not, Conv1D/2D/3D), in both regimes of the mixed rule (ghost norm and explicit)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_secure.callbacks import DPSGD
from keras_secure.privacy import ghost

C = keras.layers
LAYERS = {
    "same_s1_bias": (lambda: C.Conv2D(4, 3, padding="same"), (8, 8, 3)),
    "same_s2_even_nobias": (lambda: C.Conv2D(4, 3, strides=2, padding="same",
                                             use_bias=False), (8, 8, 3)),
    "same_s2_odd": (lambda: C.Conv2D(4, 3, strides=2, padding="same"), (9, 7, 3)),
    "valid_s2_odd": (lambda: C.Conv2D(4, 3, strides=2, padding="valid"), (9, 9, 3)),
    "valid_rect_kernel_strides": (lambda: C.Conv2D(5, (2, 3), strides=(1, 2)), (7, 8, 2)),
    "same_s3_k2": (lambda: C.Conv2D(3, 2, strides=3, padding="same"), (8, 10, 2)),
    "dilated_same": (lambda: C.Conv2D(4, 3, dilation_rate=2, padding="same"), (8, 8, 3)),
    "dilated_valid_rect": (lambda: C.Conv2D(4, 2, dilation_rate=(2, 3)), (8, 9, 2)),
    "groups": (lambda: C.Conv2D(6, 3, groups=2, padding="same"), (6, 6, 4)),
    "groups_strided_nobias": (lambda: C.Conv2D(4, 3, strides=2, groups=4, use_bias=False),
                              (7, 7, 4)),
    "channels_first": (lambda: C.Conv2D(4, 3, strides=2, padding="same",
                                        data_format="channels_first"), (3, 8, 10)),
    # output width 4 = filters: Keras adds this bias along the last axis (see
    # ghost._bias_axis_ambiguous); the layer is then differentiated per example as a whole
    "channels_first_width_is_filters": (lambda: C.Conv2D(4, 3, strides=2, padding="same",
                                                         data_format="channels_first"),
                                        (3, 8, 8)),
    "conv1d_causal_dilated": (lambda: C.Conv1D(4, 3, dilation_rate=2, padding="causal"),
                              (10, 3)),
    "conv1d_same_s3": (lambda: C.Conv1D(4, 3, strides=3, padding="same"), (10, 3)),
    "conv3d_same_s2": (lambda: C.Conv3D(3, 2, strides=2, padding="same"), (5, 4, 4, 2)),
    "dense_sequence": (lambda: C.Dense(5), (6, 4)),
    "dense_vector": (lambda: C.Dense(5), (7,)),
}


def _model(make_layer, shape, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    h = make_layer()(inputs)
    h = C.Activation("tanh")(h)  # a nonlinearity between the layer and the head
    return keras.Model(inputs, C.Dense(3)(C.Flatten()(h)))


def _loop_gradients(model, x, y, loss_fn):
    """Per-example gradients of every trainable variable, one example at a time."""
    out = []
    for xi, yi in zip(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(yi[None], model(xi[None], training=True))
        out.append([tf.convert_to_tensor(g).numpy()
                    for g in tape.gradient(loss, model.trainable_variables)])
    return out


def _ghost_terms(model, x, y, loss_fn):
    plan, problems = ghost.ghost_plan(model)
    assert not problems
    with tf.GradientTape(persistent=True) as tape:
        with ghost.recording(plan, tape) as records:
            pred = model(x, training=True)
        total = tf.reduce_sum(loss_fn(y, pred))
    targets = [c.target for calls in records.values() for c in calls]
    grads = dict(zip(map(id, targets), tape.gradient(total, targets)))
    sq, per_example = ghost.squared_norms(plan, records, grads, tf.shape(x)[0])
    return plan, sq.numpy(), per_example


def _data(shape, n=5, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("regime", ["ghost_norm", "explicit"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_norms_and_per_example_gradients_match_a_loop(name, regime, monkeypatch):
    make_layer, shape = LAYERS[name]
    model = _model(make_layer, shape)
    x, y = _data(shape)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    loop = _loop_gradients(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    expected_sq = np.array([sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)
                            for grads in loop])
    layer = model.layers[1]
    # force the regime of the layer under test (the head Dense keeps the rule's choice)
    rule = ghost._explicit
    monkeypatch.setattr(ghost, "_explicit", lambda kind, lay, *args: (
        (regime == "explicit") if lay is layer else rule(kind, lay, *args)))
    plan, sq, per_example = _ghost_terms(model, x, y, loss_fn)
    assert plan[layer] == ("dense" if isinstance(layer, C.Dense) else "conv")
    np.testing.assert_allclose(sq, expected_sq, rtol=2e-5, atol=1e-6)
    is_vector = name == "dense_vector"  # T = 1: always the ghost norm (||a|| ||g||)
    whole_layer = name == "channels_first_width_is_filters"
    assert (layer in per_example) == (whole_layer or regime == "explicit" and not is_vector)
    if layer in per_example:
        index = {id(v): j for j, v in enumerate(model.trainable_variables)}
        for v, got in zip(ghost.own_trainable(layer), per_example[layer]):
            want = np.stack([grads[index[id(v)]] for grads in loop])
            assert got.shape == want.shape
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-6)


def test_mixed_rule_picks_the_cheaper_regime():
    wide = C.Conv2D(8, 3, padding="same")
    wide.build((None, 32, 32, 3))
    deep = C.Conv2D(512, 3, padding="same")
    deep.build((None, 4, 4, 512))
    # 32x32 output (T = 1024) and a 27 x 8 kernel: per-example gradients are far smaller than
    # the T x T Gram matrices; 4x4 output (T = 16), 4608 x 512 kernel: the ghost norm is
    assert ghost._explicit("conv", wide, 1024, 27, 8)
    assert not ghost._explicit("conv", deep, 16, 4608, 512)
    dense = C.Dense(4)
    assert not ghost._explicit("dense", dense, 1, 100, 4)  # a vector input: rank-one norm
    # the digits CNN's strided convolution: T = 16, 2 T^2 = 512 < 3*3*32*64 = 18432
    assert not ghost._explicit("conv", wide, 16, 288, 64)
    assert ghost._explicit("dense", dense, 10, 10, 10)  # 2 T^2 = 200 >= 100
    assert ghost._explicit("dense", dense, None, 100, 4)  # unknown T: bounded memory


def _dp_step(model, x, y, clip, lr=0.1):
    model.compile(keras.optimizers.SGD(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dp = DPSGD(clip, 0.0, num_examples=len(x), batch_size=len(x), delta=1e-5,
               sampling="shuffle", clipping="ghost")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0, callbacks=[dp])
    assert dp.stage.plan is not None
    return model.get_weights()


def _mixed_model():
    """Every convolution kind in one model, both regimes chosen by the rule."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 4))
    h = C.Conv2D(6, 3, padding="same", activation="relu")(inputs)  # T = 144: explicit
    h = C.Conv2D(8, 3, strides=2, groups=2, padding="same", use_bias=False)(h)
    h = C.Conv2D(64, 3, dilation_rate=2, activation="relu")(h)  # T = 4: ghost norm
    h = C.Reshape((4, 64))(h)
    h = C.Conv1D(5, 2, padding="causal", activation="tanh")(h)
    h = C.Dense(6, activation="relu")(h)  # on a sequence
    return keras.Model(inputs, C.Dense(3)(C.Flatten()(h)))


def test_dpsgd_update_with_both_regimes_matches_hand_clipped_loop():
    x, y = _data((12, 12, 4), n=8)
    model = _mixed_model()
    start = model.get_weights()
    plan, _ = ghost.ghost_plan(model)
    loop = _loop_gradients(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    norms = [np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)) for grads in loop]
    clip = float(np.median(norms))  # half the examples are clipped
    total = [sum(grads[j] / max(1.0, norm / clip) for grads, norm in zip(loop, norms))
             for j in range(len(start))]
    new = _dp_step(model, x, y, clip)
    for got, s, t in zip(new, start, total):
        np.testing.assert_allclose(got, s - 0.1 * t / len(x), atol=3e-6)
    # the model exercises both regimes of the mixed rule
    _, _, per_example = _ghost_terms(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None))
    convs = [layer for layer, kind in plan.items() if kind == "conv"]
    assert any(layer in per_example for layer in convs)
    assert any(layer not in per_example for layer in convs)


def test_frozen_bias_is_left_out_of_the_norm():
    make_layer, shape = LAYERS["same_s1_bias"]
    model = _model(make_layer, shape)
    model.layers[1].bias.trainable = False
    x, y = _data(shape)
    loop = _loop_gradients(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    expected = [sum(float((g.astype(np.float64) ** 2).sum()) for g in grads) for grads in loop]
    _, sq, _ = _ghost_terms(model, x, y, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None))
    np.testing.assert_allclose(sq, expected, rtol=2e-5)
