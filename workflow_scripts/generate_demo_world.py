"""Rule generate_demo_world: the seeded demo world in the raw data layout (no downloads)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.demo import DemoConfig, generate_demo_world  # noqa: E402

cfg = DemoConfig(**smk.params.demo)
generate_demo_world(smk.params.root, cfg)
log.info("demo world in %s (%s)", smk.params.root, cfg)
