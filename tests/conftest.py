import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["shardfuzz.pytest_plugin"]

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# ci: deterministic, sized so the whole suite stays well under 20 minutes on 2 cores.
settings.register_profile("ci", max_examples=200, derandomize=True, database=None, print_blob=True, **_common)
# dev: quick feedback while editing.
settings.register_profile("dev", max_examples=15, **_common)
# nightly: many examples; run with a generous --shardfuzz-case-timeout.
settings.register_profile("nightly", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
