"""A Flower App module for the deployment engine: a federation of Keras clients on
scikit-learn's digits, each SuperNode training on partition ``partition-id`` of the training
split (docs/federated-deployment.md). It is the template of a user's own app module: expose a
``clientapp`` and a ``serverapp`` built from :class:`~keras_secure.federated.KerasClients` and
:class:`~keras_secure.federated.FederatedServer` factories.

Run config (``[tool.flwr.app.config]`` of the app :func:`write_app` writes, overridable with
``flwr run --run-config``): ``num-rounds`` (default 3), ``num-partitions`` (2),
``aggregator`` (``"fedavg"``), ``local-epochs`` (1), ``examples-per-client`` (0: the whole
partition), ``history-file`` (where the server writes its history, ``""`` for none).

Each machine here rebuilds the same seeded IID partition of the digits and keeps its own part:
the stand-in for data that already lives on each client. A real app's client factory loads
the node's local data instead (``context.node_config`` says which node it is).

Example:
    >>> from keras_secure.federated import deployment as dep
    >>> app = dep.write_app("app", "keras_secure.federated.digits_app",
    ...                     run_config=RUN_CONFIG)
"""

from __future__ import annotations

from keras_secure.federated.deployment import client_app_from, server_app_from

#: Run-config keys and defaults of this app.
RUN_CONFIG = {"num-rounds": 3, "num-partitions": 2, "aggregator": "fedavg",
              "local-epochs": 1, "examples-per-client": 0}


def make_model():
    """A small softmax regression on 8x8 digits (logits), compiled with Adam; seeded."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _setting(context, key):
    return context.run_config.get(key, RUN_CONFIG[key])


def make_clients(context):
    """The clients of this run: the seeded IID partition of the digits' training split into
    ``num-partitions`` parts (optionally cut to ``examples-per-client`` each)."""
    from keras_secure import datasets
    from keras_secure.federated import KerasClients, iid_partition

    x, y = datasets.load_digits("train")
    parts = iid_partition(x, y, int(_setting(context, "num-partitions")), seed=0)
    limit = int(_setting(context, "examples-per-client"))
    if limit > 0:
        parts = [(p.x[:limit], p.y[:limit]) for p in parts]
    return KerasClients(make_model, parts, epochs=int(_setting(context, "local-epochs")),
                        batch_size=32, seed=0)


def make_server(context):
    """The server of this run, evaluating the global model on the digits' test split."""
    from keras_secure import datasets
    from keras_secure.federated import FederatedServer

    num = int(_setting(context, "num-partitions"))
    return FederatedServer(make_model, num_clients=num,
                           num_rounds=int(_setting(context, "num-rounds")),
                           aggregator=str(_setting(context, "aggregator")),
                           test_data=datasets.load_digits("test"), timeout=600.0)


clientapp = client_app_from(make_clients)
serverapp = server_app_from(make_server)
