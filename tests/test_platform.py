import os
import subprocess
import sys


def _run(code, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=True).stdout.strip()


def test_use_cpu_cores_creates_one_device_per_core():
    out = _run("import liquidjax as lj; n = lj.use_cpu_cores(3); import jax; "
               "print(n, len(jax.devices()))")
    assert out == "3 3"


def test_use_cpu_cores_respects_existing_flags_and_backend():
    out = _run("import liquidjax as lj; print(lj.use_cpu_cores(4))",
               {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert out == "2"
    out = _run("import jax; jax.devices(); import liquidjax as lj; print(lj.use_cpu_cores(4))")
    assert out == "1"
