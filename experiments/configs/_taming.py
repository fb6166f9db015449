"""The settings shared by taming-transformers' released f16 VQGANs (ImageNet and FFHQ).

ddconfig: ch 128, ch_mult (1, 1, 2, 2, 4), two res blocks, attention at 16x16, z_channels and
embed_dim 256, 256x256 images -> 16x16 codes. VQLPIPSWithDiscriminator: L1 + LPIPS, hinge,
adaptive weight, codebook_weight 1. VectorQuantizer2(beta=0.25, legacy=True) learned codebook.
Adam (0.5, 0.9) for both networks at lr = 4.5e-6 x global batch (taming's main.py).
"""

import ml_collections

from experiments.configs import common


def taming_f16(num_codes: int, batch_size: int) -> ml_collections.ConfigDict:
    config = common.vqgan_base()
    config.data.image_size = 256
    config.data.crop = "center"  # taming: shorter side to 256, then a 256 crop
    config.data.random_flip = False
    config.data.batch_size = batch_size
    config.data.eval_batch_size = 32
    config.data.shuffle_buffer = 10_000
    config.quantizer.kind = "vq"
    config.quantizer.num_codes = num_codes
    config.quantizer.legacy_beta = True  # as the released checkpoints were trained
    config.evals.num_eval_batches = 50
    config.train.update(num_steps=1_000_000, log_steps=100, eval_steps=20_000, ckpt_steps=5_000)
    return config
