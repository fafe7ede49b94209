"""Former home of the request policies, which are now the package `device.runtime.policies` (one module per
policy). Kept only for importers outside the device runtime that still use this path (tests/device/test_no_torch.py,
tests/reliability/test_faults.py, benchmarks/bench_reliability.py); new code imports `device.runtime.policies`."""
from device.runtime.policies import Decision, Policy, PolicyState, parse_policy  # noqa: F401
from device.runtime.policies.always import Always  # noqa: F401
from device.runtime.policies.every_n import EveryN  # noqa: F401
