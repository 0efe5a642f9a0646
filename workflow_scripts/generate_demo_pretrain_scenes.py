"""Rule generate_demo_pretrain_scenes: the demo world's labelled pre-training scenes."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from pathlib import Path  # noqa: E402

from mia.data.demo import DemoConfig  # noqa: E402
from mia.data.demo_pretrain import generate_pretrain_scenes, scenes_config_for  # noqa: E402

cfg = scenes_config_for(DemoConfig(**smk.params.demo), smk.params.scenes)
labels = generate_pretrain_scenes(Path(smk.output.labels).parent, cfg)
log.info("pre-training scenes: %s (%s)", labels, cfg)
