"""Rule generate_demo_test_set: the demo world's test2015 (new images, questions only)."""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.data.demo import DemoConfig, generate_demo_test_set  # noqa: E402

manifest = generate_demo_test_set(smk.params.root, DemoConfig(**smk.params.demo),
                                  num_images=smk.params.num_images)
log.info("demo test set in %s: %d images, questions %s", smk.params.root,
         len(manifest.image_ids), manifest.num_questions)
