"""Default configs of the families, which experiment configs start from (and the taming
converter writes): every field a family reads exists here, so a locked config turns a
misspelt override into an error."""

import ml_collections


def vqvae_base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.family = "vqvae"
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
        skip_unreadable=False,  # True: images that do not decode are skipped, each with a warning
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
        # 'ema' (EMA codebook state) | 'vq' (codebook learned by loss) | 'gumbel' | 'cosine' |
        # 'simvq' | 'residual' | 'fsq' | 'lfq' | 'bsq' (vqjax.quantizers.QUANTIZERS)
        kind="ema",
        num_codes=512,
        beta=0.25,  # commitment weight
        legacy_beta=False,  # True: taming's VectorQuantizer2(legacy=True) beta placement
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
        # How the gradient crosses the code choice of 'vq', 'ema', 'cosine', 'simvq' and the
        # residual stages: 'straight_through' | 'rotation' (Fifty et al. 2024).
        gradient="straight_through",
        codebook_dim=32,  # 'cosine': the factorised code space (ViT-VQGAN)
        levels=(),  # 'fsq': levels per code dimension; () = the paper's preset for num_codes
        # 'lfq' / 'bsq': the entropy term, weight x (per-vector entropy - gamma x codebook entropy).
        entropy_weight=0.1,
        diversity_gamma=1.0,
        inverse_temperature=100.0,
        entropy_group_size=16,  # code bits per exactly computed group (an upper bound across groups)
        # 'residual': `depth` stages of kind `stage` on successive residuals.
        stage="vq",
        depth=4,
        shared_codebook=False,
        quantizer_dropout=False,  # train on the first n ~ U{1..depth} stages (SoundStream)
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
        scale_lr_by_batch=False,  # taming: learning_rate * global batch size
        params_ema_decay=0.0,  # > 0: evaluate an exponential moving average of the weights
    )
    config.train = dict(
        num_steps=100_000,
        log_steps=100,
        eval_steps=5_000,
        ckpt_steps=5_000,
        keep_checkpoints=3,
        tensorboard=True,  # event files in <workdir>/tensorboard (TensorFlow writes them, buckets too)
        # On a CPU, which convolutions the jits use: 'ynnpack' (XLA's default) or 'xla' (its
        # own path, vqjax.parallel.compiler_options). Which is faster depends on the network:
        # 'xla' for the taming autoencoder on 32x32 images, 'ynnpack' for the VQ-VAE
        # (bench/train_step.py --config.train.cpu_convolutions=...). No effect off a CPU.
        cpu_convolutions="ynnpack",
    )
    config.evals = dict(
        num_eval_batches=-1,  # -1: the whole eval split
        num_recon_images=8,
        # Weights of metrics (python -m vqjax.convert); an empty path skips the metric with a
        # reason. LPIPS falls back to loss.lpips_path when the loss has one.
        lpips_path="",
        inception_path="",  # rFID: the FID InceptionV3 on originals and reconstructions
    )
    return config


def vqgan_base() -> ml_collections.ConfigDict:
    """taming-transformers' VQGAN (VQModel + VQLPIPSWithDiscriminator) defaults, at the
    ImageNet f16 size; experiment files change what they need."""
    config = vqvae_base()
    config.family = "vqgan"
    config.model = dict(
        name="vqgan",
        ch=128,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(16,),
        z_channels=256,
        embed_dim=256,
        resolution=256,  # attention levels are picked from this, as in taming
        in_channels=3,
        out_ch=3,
        dropout=0.0,
        dtype="float32",  # compute dtype; 'bfloat16' keeps float32 params and optimizer state
        remat=False,  # recompute each block's activations in the backward pass
    )
    # taming's VectorQuantizer2: a codebook learned by loss, beta 0.25, uniform(-1/K, 1/K)
    # init. Dead-code restarts are our addition (taming has none); set
    # quantizer.dead_code_threshold=0 for its exact behaviour.
    config.quantizer.kind = "vq"
    config.quantizer.num_codes = 1024
    config.disc = dict(ndf=64, n_layers=3, norm="batch", dtype="float32")
    config.loss = dict(
        reconstruction="l1",
        perceptual_weight=1.0,  # LPIPS; needs lpips_path (python -m vqjax.convert lpips)
        lpips_path="",
        gan_loss="hinge",  # 'hinge' | 'non_saturating' (taming's 'vanilla') | 'least_squares'
        disc_weight=0.8,
        adaptive_weight=True,  # taming's ||grad rec|| / ||grad gan|| at decoder/conv_out
        disc_start=250_001,  # first step the discriminator learns
        # Steps the discriminator trains before its signal reaches the generator (taming: 0),
        # so that the generator never learns from an untrained discriminator.
        gen_adv_delay=0,
        lecam_weight=0.0,
        lecam_decay=0.999,
        r1_gamma=0.0,
    )
    # taming: Adam(0.5, 0.9) for both, lr = 4.5e-6 * global batch.
    config.optim.update(learning_rate=4.5e-6, scale_lr_by_batch=True, b1=0.5, b2=0.9)
    config.optim_d = dict(config.optim)
    return config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few seconds of training with a tiny model: what the tests run."""
    if config.model.name == "vqgan":
        config.model.update(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(8,),
                            z_channels=8, resolution=config.data.image_size)
        config.disc.update(ndf=8, n_layers=2)
        config.loss.update(perceptual_weight=0.0, disc_start=1, gen_adv_delay=1)
    else:
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


def prior_base(kind: str) -> ml_collections.ConfigDict:
    """A prior over a tokenizer's code maps: `kind` 'gpt' (taming's transformer: AdamW 0.9/0.95,
    weight decay 0.01 on dense kernels) or 'maskgit' (Adam 0.9/0.96, weight decay 0.045, label
    smoothing 0.1, cosine mask schedule, 8 decoding steps at choice temperature 4.5)."""
    config = ml_collections.ConfigDict()
    config.family = "prior"
    config.seed = 0
    config.tokenizer_dir = ""  # a tokenizer workdir or `python -m vqjax.convert taming --out DIR`
    config.data = vqvae_base().data
    config.data.source = "tokenizer"  # 'tokenizer': the tokenizer's data; else as in tokenizer configs
    config.data.update(batch_size=64, eval_batch_size=256)
    config.tokens = dict(
        flip=True,  # also encode mirrored images (random flips, precomputed)
        encode_batch_size=256,
        max_train_images=0,  # > 0: only the first N images of each split (quick trials, tests)
        max_eval_images=0,
    )
    config.model = dict(
        name=kind,
        num_classes=0,  # 0: unconditional; else labels 0..num_classes-1 of the data
        num_layers=12,
        num_heads=8,
        embed_dim=512,
        mlp_dim=2048,
        dropout=0.0 if kind == "gpt" else 0.1,
        attn_dropout=0.0 if kind == "gpt" else 0.1,
        dtype="float32",
    )
    config.loss = dict(
        cond_drop=0.0,  # > 0: train the null condition too, for classifier-free guidance
        label_smoothing=0.0 if kind == "gpt" else 0.1,
        mask_schedule="cosine",  # MaskGIT's gamma for training masks
    )
    config.optim = dict(
        name="adamw",
        learning_rate=4.5e-4 if kind == "gpt" else 1e-4,
        b1=0.9,
        b2=0.95 if kind == "gpt" else 0.96,
        eps=1e-8,
        weight_decay=0.01 if kind == "gpt" else 0.045,
        schedule="cosine",
        warmup_steps=0 if kind == "gpt" else 5000,
        final_lr_fraction=0.0,
        grad_clip_norm=1.0,
        scale_lr_by_batch=False,
        params_ema_decay=0.0,
    )
    config.train = dict(num_steps=100_000, log_steps=100, eval_steps=5_000, ckpt_steps=5_000,
                        keep_checkpoints=3, tensorboard=True)
    config.evals = dict(
        num_eval_batches=-1,
        # FID / IS / KID of num_fid_samples samples against as many eval images, with the FID
        # Inception's weights (python -m vqjax.convert inception); '' skips them with a reason.
        inception_path="",
        num_fid_samples=10_000,
    )
    config.sampling = dict(
        seed=0,
        num_samples=16,
        temperature=1.0,
        top_k=0,  # GPT: 0 = no top-k
        top_p=1.0,  # GPT: 1 = no nucleus
        guidance_scale=1.0,  # 1 = plain conditional; classifier-free guidance otherwise
        num_steps=8,  # MaskGIT decoding steps
        schedule="cosine",
        choice_temperature=4.5,
        inpaint_dilation=1,  # tokens around the hole also regenerated (inpainting.png)
    )
    return config


def shrink_prior_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config.model.update(num_layers=1, num_heads=2, embed_dim=32, mlp_dim=64)
    config.data.update(batch_size=8, eval_batch_size=8)
    config.tokens.update(encode_batch_size=64, max_train_images=256, max_eval_images=32)
    config.optim.warmup_steps = 0
    config.train.update(num_steps=4, log_steps=2, eval_steps=2, ckpt_steps=2)
    config.evals.update(num_eval_batches=2, num_fid_samples=16)
    config.sampling.update(num_samples=8, num_steps=4)
    return config


def diffusion_base() -> ml_collections.ConfigDict:
    """DDPM on CIFAR-10 (Ho et al. 2020): the U-Net of 35.7 M parameters, T = 1000 linear betas
    1e-4 .. 0.02, eps prediction with L_simple, Adam 2e-4 with 5000 warm-up steps, gradient
    clipping at 1, batch 128, weight average 0.9999, dropout 0.1, random flips."""
    config = ml_collections.ConfigDict()
    config.family = "diffusion"
    config.seed = 0
    config.init_from = ""
    # Latent diffusion: a tokenizer workdir or converted VQ model whose encoder outputs are the
    # data ('' = pixel space); with data.source='tokenizer' the tokenizer's data.
    config.tokenizer_dir = ""
    config.latents = dict(flip=True, encode_batch_size=256, max_train_images=0, max_eval_images=0)
    config.data = vqvae_base().data
    config.data.update(crop="random", random_flip=True, batch_size=128, eval_batch_size=256)
    config.model = dict(
        channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        dropout=0.1,
        num_heads=1,
        head_channels=-1,  # > 0: heads of this width (ADM: 64) instead of num_heads
        scale_shift_norm=False,  # ADM: the timestep sets GroupNorm's scale and shift
        resblock_updown=False,  # ADM: residual blocks resample instead of convolutions
        num_classes=0,  # > 0: class-conditional (labels 0..num_classes-1; num_classes = no class)
        downsample_padding=0,  # 0: DDPM's bottom/right padding; 1: every side (ADM)
        flip_sin_to_cos=False,  # DDPM (sin, cos) embeddings; ADM: True with freq_shift 0
        freq_shift=1.0,
        norm_groups=32,
        norm_eps=1e-6,
        dtype="float32",
    )
    config.diffusion = dict(
        schedule="linear",  # 'linear' | 'cosine' | 'sqrt_linear'
        num_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        prediction="eps",  # 'eps' | 'x0' | 'v'
        variance="fixed_large",  # 'fixed_large' (DDPM's CIFAR-10 samples) | 'fixed_small' | 'learned_range'
        vlb_weight=0.001,  # improved DDPM's hybrid objective (learned_range only)
        cond_drop=0.0,  # > 0 with num_classes: classifier-free guidance training
        low_res_size=0,  # > 0: super-resolution from low_res_size x low_res_size images
        # > 0 (super-resolution): denoise the residual (image - bicubic upsampling) x this instead
        # of the image (SR3 denoises the image); 1 / the residual's standard deviation
        residual_scale=0.0,
        clip_x0=True,
    )
    config.optim = vqvae_base().optim  # Adam 2e-4 (0.9, 0.999), as the VQ-VAE's
    config.optim.update(warmup_steps=5000, grad_clip_norm=1.0, params_ema_decay=0.9999)
    config.train = dict(num_steps=800_000, log_steps=100, eval_steps=10_000, ckpt_steps=10_000,
                        keep_checkpoints=3, tensorboard=True,
                        # XLA's own convolutions (parallel.step_compiler_options), in the train step and
                        # sampling: the U-Net's step 2.6x (ddpm_cifar10_small, 12.4 vs 4.7 images/s)
                        # and 1.7x (diffusion_quickstart) faster on 2 cores (bench/diffusion.py).
                        cpu_convolutions="xla")
    config.evals = dict(
        num_eval_batches=-1,
        bpd_timesteps=4,  # timesteps per test image of the unbiased bits/dim estimate
        inception_path="",  # FID / IS / KID of samples (python -m vqjax.convert inception)
        num_fid_samples=10_000,
        num_sr_images=64,  # super-resolution: test images upsampled for PSNR / SSIM
    )
    config.sampling = dict(
        seed=0,
        num_samples=16,
        sampler="ddim",  # 'ddim' | 'ddpm' | 'dpm_solver'
        steps=50,
        spacing="uniform",  # 'uniform' | 'quadratic' | 'linspace' | 'trailing'
        eta=0.0,
        guidance_scale=1.0,
    )
    return config


def shrink_diffusion_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    # One level (no resampling) and attention in the middle only: what compiles fastest. The
    # U-Net's other paths are pinned against diffusers in tests/test_unet.py.
    config.model.update(channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=8, attention_resolutions=(),
                        head_channels=-1)
    config.diffusion.num_timesteps = 100
    config.data.update(batch_size=8, eval_batch_size=8)
    config.optim.warmup_steps = 0
    config.train.update(num_steps=4, log_steps=2, eval_steps=2, ckpt_steps=2)
    config.evals.update(num_eval_batches=2, num_fid_samples=16, num_sr_images=8, bpd_timesteps=4)
    config.sampling.update(num_samples=8, steps=5)
    return config


def evaluation_base() -> ml_collections.ConfigDict:
    """`python -m experiments.evaluate` and `vqjax evaluate`: a model directory's metrics
    (experiments/configs/evaluate.py describes them)."""
    config = ml_collections.ConfigDict()
    config.model_dir = ""  # a training workdir or `python -m vqjax.convert taming --out DIR`
    config.out = ""  # '' = <model_dir>/eval
    config.data = vqvae_base().data
    config.data.source = "model"  # 'model': the model config's data; else as in training configs
    config.data.eval_batch_size = 64
    # num_fid_samples: a prior's samples for FID / IS / KID (with inception_path).
    config.evals = dict(num_eval_batches=-1, lpips_path="", inception_path="", num_fid_samples=10_000)
    return config
