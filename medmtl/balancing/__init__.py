"""Multitask loss balancing behind one small interface (:class:`Balancer`).

Choose one in YAML through its class path, e.g.
``model.balancer: {class_path: medmtl.balancing.GradNorm, init_args: {tasks: [recon, seg], alpha: 1.5}}``.
"""

from medmtl.balancing.base import BalanceOutput, Balancer, NanPolicy, NonFiniteLossError
from medmtl.balancing.coba import CoBa
from medmtl.balancing.dwa import DynamicWeightAverage
from medmtl.balancing.fixed import FixedWeights
from medmtl.balancing.gradnorm import GradNorm
from medmtl.balancing.pcgrad import PCGrad, project_conflicting
from medmtl.balancing.uncertainty import UncertaintyWeighting

__all__ = [
    "BalanceOutput",
    "Balancer",
    "CoBa",
    "DynamicWeightAverage",
    "FixedWeights",
    "GradNorm",
    "NanPolicy",
    "NonFiniteLossError",
    "PCGrad",
    "UncertaintyWeighting",
    "project_conflicting",
]
