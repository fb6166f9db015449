"""Defaults shared by the tokenizer configs; every field any trainer reads exists here, so a
locked config turns a misspelt override into an error."""

import ml_collections


def vqvae_base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.init_from = ""  # a workdir whose latest params/codebook start this run

    config.data = dict(
        source="embedded",  # 'embedded' | 'folder' | 'tfds'
        name="",  # TFDS name
        path="",  # folder holding train/ and test/
        data_dir="",  # TFDS data_dir ('' = TFDS default)
        train_split="train",
        eval_split="test",
        image_size=32,
        channels=3,
        crop="random",  # 'random' (center at eval) | 'center' | 'resize'
        random_flip=True,
        batch_size=128,  # global, over all devices and hosts
        eval_batch_size=256,
        shuffle_buffer=50_000,
        num_threads=0,  # tf.data threads, 0 = one per CPU
        seed=0,
    )
    config.model = dict(
        name="vqvae",
        hidden_channels=256,
        residual_channels=256,
        num_residual_blocks=2,
        num_downsamples=2,
        embed_dim=64,
        out_channels=3,
        dtype="float32",
    )
    config.quantizer = dict(
        kind="ema",  # 'ema' (EMA codebook state) | 'vq' (codebook learned by loss)
        num_codes=512,
        beta=0.25,  # commitment weight
        decay=0.99,  # EMA decay of the codebook statistics (and of usage counts)
        epsilon=1e-5,  # Laplace smoothing
        debias=False,  # zero-debiased EMA, as haiku's VectorQuantizerEMA
        initial_count=1.0,  # EMA pseudo-count of a fresh or restarted code
        # Dead-code restart: a code whose usage EMA (its share of the vectors relative to a
        # uniform 1/K share, decay `usage_decay`) falls below the threshold is re-seeded from
        # a current encoder output. 0 = never.
        dead_code_threshold=0.03,
        usage_decay=0.9,
        init="uniform",  # 'uniform' | 'kmeans++' (on the first batch's encoder outputs)
        kmeans_iters=10,
        usage_window=100,  # steps over which `codes_used_recent` counts a code as used
    )
    config.loss = dict(reconstruction="l2")
    config.optim = dict(
        name="adam",
        learning_rate=2e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
        final_lr_fraction=0.0,
        grad_clip_norm=0.0,
    )
    config.train = dict(
        num_steps=100_000,
        log_steps=100,
        eval_steps=5_000,
        ckpt_steps=5_000,
        keep_checkpoints=3,
    )
    config.evals = dict(
        num_eval_batches=-1,  # -1: the whole eval split
        num_recon_images=8,
    )
    return config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few seconds of training with a tiny model: what the tests run."""
    config.model.hidden_channels = 16
    config.model.residual_channels = 8
    config.model.num_residual_blocks = 1
    config.model.embed_dim = 8
    config.quantizer.num_codes = 32
    config.quantizer.init = "uniform"
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.shuffle_buffer = 256
    config.train.num_steps = 4
    config.train.log_steps = 2
    config.train.eval_steps = 2
    config.train.ckpt_steps = 2
    config.evals.num_eval_batches = 2
    config.evals.num_recon_images = 4
    return config
