"""The test session's XLA flags (tests/conftest.py) for a subprocess that sets its own device
count, so that it compiles as the session does."""

import os
import re


def session_flags(devices: int | None = None) -> str:
    """XLA_FLAGS of this session without its device count, with `devices` CPU devices if given."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).split()
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)
