r"""taming-transformers' "VQGAN ImageNet (f=16), 1024" (configs/imagenet_vqgan.yaml).

  python -m experiments.vqgan --config=experiments/configs/vqgan_imagenet_f16_1024.py \
    --config.data.data_dir=/path/to/tfds --config.loss.lpips_path=/path/lpips.msgpack \
    --workdir=/tmp/vqgan_imagenet_f16_1024

Data: TFDS imagenet2012 (prepared from the manually downloaded archives). Loss: disc_start
250001, disc_weight 0.8, codebook_weight 1.0, 3-layer PatchGAN (ndf 64). Batch 12 (taming's
authors: "a batch size of ~12" on one 40 GB GPU), lr 4.5e-6 x 12. taming reports reconstruction
FID 7.94 on the ImageNet validation split (10.54 against train) for its released checkpoint.
Arg `smoke` shrinks the model to seconds (the data still has to exist).
"""

from experiments.configs import _taming, common


def get_config(arg=None):
    config = _taming.taming_f16(num_codes=1024, batch_size=12)
    config.data.source = "tfds"
    config.data.name = "imagenet2012"
    config.data.eval_split = "validation"
    config.loss.update(disc_start=250_001, disc_weight=0.8)
    config.disc.update(n_layers=3)
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
