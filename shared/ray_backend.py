"""Ray, the optional extra for work that outgrows one machine: imported and started in one place."""
from __future__ import annotations

from shared.errors import ConfigError


def start_ray(address: str = "", flag: str = "backend"):
    """The `ray` module with a cluster attached: `address` (e.g. ray://host:10001), else a one-node local one."""
    try:
        import ray
    except ImportError:
        raise ConfigError(flag, "ray", "Ray is not installed; install the optional extra: "
                                       "pip install -c constraints.txt 'lsc4rec[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    return ray
