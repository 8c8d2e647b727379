"""Federated learning on Flower: Keras 3 clients with keras_secure's callbacks, malicious
clients, robust aggregation, user-level differential privacy, and a guard against malformed
updates (docs/federated.md).

- Data: :func:`iid_partition`, :func:`dirichlet_partition` (Hsu et al. 2019),
  :func:`label_distribution`.
- Clients: :class:`KerasClients` (a Flower ``ClientApp`` for any compiled Keras model).
- Malicious clients: :class:`LabelFlipping`, :class:`Backdoor`, :class:`SignFlip`,
  :class:`ScaledUpdate`, :class:`ModelReplacement` (Bagdasaryan et al. 2020),
  :class:`CorruptUpdate`.
- Server: :func:`make_strategy` (Flower's FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum,
  Bulyan, checked against the malicious clients they tolerate), :class:`UserLevelDP`
  (Flower's fixed-clipping DP wrappers, accounted with dp-accounting), :class:`UpdateGuard`,
  :class:`FederatedServer` (a Flower ``ServerApp``).
- Runs: :func:`simulate` (Flower's Ray engine, or in this process) returning a
  :class:`FederatedHistory`; :mod:`keras_secure.federated.deployment` for SuperLink and
  SuperNodes.

Example:
    >>> from keras_secure import federated as fl
    >>> parts = fl.dirichlet_partition(x, y, num_clients=10, alpha=0.5)
    >>> history = fl.simulate(make_model, parts, num_rounds=10, aggregator="fedmedian",
    ...                       malicious={0: fl.SignFlip()}, test_data=(x_test, y_test))
"""

from keras_secure.federated.attacks import (Backdoor, CorruptUpdate, LabelFlipping,
                                            MaliciousBehaviour, ModelReplacement, ScaledUpdate,
                                            SignFlip)
from keras_secure.federated.client import KerasClients
from keras_secure.federated.partition import (Partition, dirichlet_partition, iid_partition,
                                              label_distribution)
from keras_secure.federated.server import (AGGREGATORS, UpdateGuard, UserLevelDP,
                                           clip_update, make_strategy, max_tolerated)
from keras_secure.federated.simulation import (FederatedHistory, FederatedServer, LocalGrid,
                                               simulate)

__all__ = [
    "AGGREGATORS", "Backdoor", "CorruptUpdate", "FederatedHistory", "FederatedServer",
    "KerasClients", "LabelFlipping", "LocalGrid", "MaliciousBehaviour", "ModelReplacement",
    "Partition", "ScaledUpdate", "SignFlip", "UpdateGuard", "UserLevelDP", "clip_update",
    "dirichlet_partition", "iid_partition", "label_distribution", "make_strategy",
    "max_tolerated", "simulate",
]
