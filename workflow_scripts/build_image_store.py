"""Rule caption_image_store: the images of the CNN fine-tuning runs, decoded and resized once.

``purpose`` train: the Karpathy train + restval images at the CNN's ``resize``; eval: the val and
test images at its ``crop`` (mia.captioning.image_store). Every fine-tuning run reads these.
"""

from _wf import start

smk = globals()["snakemake"]
log = start(smk)

from mia.captioning.image_store import build_image_store, karpathy_images  # noqa: E402

images = karpathy_images(smk.input.karpathy, smk.params.root, smk.wildcards.purpose)
build_image_store(images, smk.output.store, int(smk.wildcards.size), workers=smk.threads,
                  purpose=smk.wildcards.purpose)
log.info("%s: %d images at %s px", smk.output.store, len(images), smk.wildcards.size)
