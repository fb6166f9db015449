"""A whole evaluation of a model directory (`python -m experiments.evaluate`): a tokenizer's
reconstruction, codebook and compression metrics, or a prior's likelihood and sample quality."""

from __future__ import annotations

import os

import jax
import ml_collections

from vqjax.core import parallel, paths
from vqjax.data import codes as codes_lib, images as data_lib
from vqjax.eval import likelihood, reconstruction, samples
from vqjax.inference import legacy, prior as prior_inference, tokenizer as tokenizer_lib


def resolve_data(data_cfg, model_data_cfg):
    """`data.source='model'`: the model config's data with this config's eval split and batch."""
    if data_cfg.source != "model":
        return data_cfg
    resolved = ml_collections.ConfigDict(model_data_cfg.to_dict())
    resolved.eval_split, resolved.eval_batch_size = data_cfg.eval_split, data_cfg.eval_batch_size
    return resolved


def evaluate_model(config, *, devices=None) -> dict:
    """Evaluates `config.model_dir` (a workdir or a converted model) on `config.data`; writes
    `<config.out or model_dir/eval>/eval.json` and returns the metrics. A tokenizer gets
    reconstruction metrics, a prior (vqjax.prior) likelihoods and sample quality."""
    if not config.model_dir:
        raise ValueError("config.model_dir is empty; pass --config.model_dir=DIR, a vqjax training "
                         "workdir or a directory written by `python -m vqjax.convert taming`.")
    if legacy.read_model_config(config.model_dir).family == "prior":
        result = evaluate_prior(config, devices=devices)
    else:
        result = evaluate_tokenizer(config, devices=devices)
    result["model_dir"] = os.fspath(paths.resolve(config.model_dir))
    out = config.out or paths.join(config.model_dir, "eval")
    if jax.process_index() == 0:
        paths.write_json(paths.join(out, "eval.json"), result)
    return result


def evaluate_tokenizer(config, *, devices=None) -> dict:
    """Reconstruction, codebook and compression metrics of the tokenizer in `config.model_dir`."""
    tokenizer = tokenizer_lib.load(config.model_dir)
    data_cfg = resolve_data(config.data, tokenizer.config.data)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(data_cfg.eval_batch_size, mesh, "config.data.eval_batch_size")
    replicated = parallel.replicated(mesh)

    reconstruct = tokenizer.reconstruct_fn()
    eval_step = jax.jit(reconstruction.make_eval_step(reconstruct, tokenizer.num_codes), out_shardings=replicated,
                        compiler_options=tokenizer.compiler_options)
    evaluators = reconstruction.load_evaluators(config.evals.lpips_path, config.evals.inception_path).place(mesh)
    weights = parallel.replicate(tokenizer.weights, mesh)
    image_shape = (data_cfg.eval_batch_size, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
    code_bits = reconstruction.code_bits_per_pixel(reconstruct, weights, image_shape, tokenizer.num_codes)

    batches = data_lib.make_dataset(data_cfg, data_cfg.eval_split, data_cfg.eval_batch_size, train=False)
    result = reconstruction.evaluate(eval_step, weights, batches, mesh, num_codes=tokenizer.num_codes, code_bits=code_bits,
                      evaluators=evaluators, num_batches=config.evals.num_eval_batches)
    result["data"] = {k: data_cfg[k] for k in ("source", "name", "path", "eval_split", "image_size")}
    return result


def format_table(result: dict) -> str:
    """The metrics as an aligned two-column table, skipped ones with their reason."""
    rows = [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in result.items()
            if isinstance(v, (int, float))]
    rows += [(k, f"skipped: {reason}") for k, reason in result.get("skipped", {}).items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def evaluate_prior(eval_config, *, devices=None) -> dict:
    """`python -m experiments.evaluate` on a prior's workdir (`eval_config.model_dir`): bits per
    token and per dimension on the eval split (its batch size and count from `eval_config`)
    and, with `evals.inception_path`, FID / IS / KID of `evals.num_fid_samples` samples."""
    loaded = prior_inference.load(eval_config.model_dir)
    config = ml_collections.ConfigDict(loaded.config.to_dict())
    config.data.eval_batch_size = eval_config.data.eval_batch_size
    config.evals.update(num_eval_batches=eval_config.evals.num_eval_batches,
                        inception_path=eval_config.evals.inception_path,
                        num_fid_samples=eval_config.evals.num_fid_samples)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
    replicated = parallel.replicated(mesh)
    data_cfg = prior_inference.resolve_data(config.data, loaded.tokenizer)
    codes = codes_lib.cached_codes(eval_config.model_dir, loaded.tokenizer, config.tokenizer_dir, data_cfg,
                                    data_cfg.eval_split, flip=False, batch_size=int(config.tokens.encode_batch_size),
                                    mesh=mesh, limit=int(config.tokens.max_eval_images))
    eval_step = jax.jit(likelihood.make_eval_step(loaded.model), out_shardings=replicated)
    image_shape = (data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
    result = likelihood.evaluate(eval_step, parallel.replicate(loaded.params, mesh), codes,
                                 batch_size=int(config.data.eval_batch_size),
                                 num_batches=int(config.evals.num_eval_batches), seed=int(config.seed), mesh=mesh,
                                 seq_len=loaded.model.seq_len, image_shape=image_shape)
    result["likelihood"] = likelihood.describe(loaded.model)
    result.update(samples.generation_metrics(
        loaded.model, loaded.params, loaded.tokenizer, sampling_cfg=config.sampling, data_cfg=data_cfg,
        inception_path=config.evals.inception_path, num_samples=int(config.evals.num_fid_samples), mesh=mesh,
        code_shape=loaded.code_shape))
    return result
