"""Benchmarking: protocols as objects, test streams, the evaluation runner."""

from testtime.bench.protocols import Batch, Domain, Protocol, get_protocol, list_protocols
from testtime.bench.runner import EvalResult, evaluate, to_float_batch

__all__ = ["Batch", "Domain", "EvalResult", "Protocol", "evaluate", "get_protocol", "list_protocols", "to_float_batch"]
