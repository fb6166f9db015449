r"""taming-transformers' FFHQ / FacesHQ f16 VQGAN with 1024 codes (configs/faceshq_vqgan.yaml,
the first stage of its faceshq_transformer).

  python -m experiments.vqgan --config=experiments/configs/vqgan_ffhq_f16_1024.py \
    --config.data.path=/path/to/ffhq --config.loss.lpips_path=/path/lpips.msgpack \
    --workdir=/tmp/vqgan_ffhq_f16_1024

Data: a folder with train/ and test/ sub-folders of face images (FFHQ has no TFDS builder),
256x256. Loss: disc_start 30001, disc_weight 0.8, codebook_weight 1.0, 3-layer PatchGAN.
Batch 12, lr 4.5e-6 x 12. taming reports no reconstruction FID for this model; its README gives
FID 9.6 for the samples of the FFHQ transformer trained on these codes.
Arg `smoke` shrinks the model to seconds (the data still has to exist).
"""

from experiments.configs import _taming, common


def get_config(arg=None):
    config = _taming.taming_f16(num_codes=1024, batch_size=12)
    config.data.source = "folder"
    config.data.random_flip = True
    config.loss.update(disc_start=30_001, disc_weight=0.8)
    config.disc.update(n_layers=3)
    if "smoke" in common.config_args(arg):
        config = common.shrink_for_smoke(config)
    return config
