r"""taming-transformers' "VQGAN ImageNet (f=16), 16384" (the released model.yaml).

  python -m experiments.vqgan --config=experiments/configs/vqgan_imagenet_f16_16384.py \
    --config.data.data_dir=/path/to/tfds --config.loss.lpips_path=/path/lpips.msgpack \
    --workdir=/tmp/vqgan_imagenet_f16_16384

Data: TFDS imagenet2012. Loss: disc_start 0, disc_weight 0.75, a 2-layer PatchGAN (ndf 64),
codebook_weight 1.0. Batch 14 (taming's authors: "bs=14 for the f16 model"), lr 4.5e-6 x 14.
taming reports reconstruction FID 4.98 on the ImageNet validation split (7.41 against train).
taming starts the discriminator at step 0 and lets it reach the generator at once
(gen_adv_delay 0); --config.loss.gen_adv_delay=5000 avoids the generator learning from an
untrained discriminator.
Arg `smoke` shrinks the model to seconds (the data still has to exist).
"""

from experiments.configs import _taming, common


def get_config(arg=None):
    config = _taming.taming_f16(num_codes=16384, batch_size=14)
    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.loss.update(disc_start=0, disc_weight=0.75)
    config.disc.update(n_layers=2)
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
