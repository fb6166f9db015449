r"""Speed of the priors: GPT sampling (vqjax's key/value cache) beside taming-transformers'
`sample` (the whole sequence recomputed per token, what `Net2NetTransformer.sample` runs) and
`sample_with_past` (its cache), MaskGIT decoding, and the GPT prior's train step beside taming's
minGPT trained as `Net2NetTransformer` trains it (cross entropy, AdamW). Same sizes on both
sides (the config's layers, heads and width, minGPT's 4x MLP), random weights; code maps of
`--code_side`^2 positions over `--num_codes` codes (vqgan_cifar10's 8x8 of 1024 by default).

  python bench/sampling.py [--gpt_config=experiments/configs/gpt_cifar10.py] \
      [--maskgit_config=experiments/configs/maskgit_cifar10.py] [--batch=16] [--train_batch=32]
      # about 3 minutes on 2 CPU cores; the [interop] extra for the PyTorch peer

Sampling runs without classifier-free guidance (taming has none; guidance doubles the batch)
and with the config's top-k. codes/s counts sampled code indices (batch x positions).
"""

from __future__ import annotations

import os
import sys
import types

try:  # PyTorch before TensorFlow-using imports (see bench/train_step.py).
    import torch
    import torch._dynamo  # pylint: disable=unused-import
except ImportError:
    torch = None

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import median_seconds, write_json  # pylint: disable=wrong-import-position
from vqjax.core import optim  # pylint: disable=wrong-import-position
from vqjax.families.prior import PriorFamily  # pylint: disable=wrong-import-position
from vqjax.nets import build as nets  # pylint: disable=wrong-import-position
from vqjax.sampling import decode  # pylint: disable=wrong-import-position

_GPT = config_flags.DEFINE_config_file("gpt_config", "experiments/configs/gpt_cifar10.py", "GPT prior config.")
_MASKGIT = config_flags.DEFINE_config_file("maskgit_config", "experiments/configs/maskgit_cifar10.py",
                                           "MaskGIT prior config.")
_NUM_CODES = flags.DEFINE_integer("num_codes", 1024, "Codebook size of the tokenizer.")
_CODE_SIDE = flags.DEFINE_integer("code_side", 8, "Code maps are code_side x code_side.")
_BATCH = flags.DEFINE_integer("batch", 16, "Code maps sampled per call.")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 32, "Batch of the timed train steps.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement.")
_PEER = flags.DEFINE_bool("peer", True, "Also time taming's minGPT (needs PyTorch and taming).")
_JSON = flags.DEFINE_string("json", None, "Write the figures here.")


def random_transformer(config):
    model = nets.build_transformer(num_codes=_NUM_CODES.value, seq_len=_CODE_SIDE.value ** 2, **config.model)
    params = model.init(jax.random.key(0), jnp.zeros((1, model.seq_len), jnp.int32),
                        jnp.zeros((1,), jnp.int32))["params"]
    return model, params


def vqjax_sampling(report: dict) -> None:
    gpt_cfg, maskgit_cfg = _GPT.value, _MASKGIT.value
    labels = jnp.arange(_BATCH.value, dtype=jnp.int32) % max(1, int(gpt_cfg.model.num_classes))
    model, params = random_transformer(gpt_cfg)
    report["gpt_params"] = optim.count_params(params)
    gpt = lambda: decode.sample_gpt(model, params, jax.random.key(1), labels,  # noqa: E731
                                    top_k=int(gpt_cfg.sampling.top_k))
    codes = _BATCH.value * model.seq_len
    report["vqjax_gpt_codes_per_sec"] = codes / median_seconds(gpt, _REPEATS.value)
    print(f"  vqjax GPT, key/value cache: {report['vqjax_gpt_codes_per_sec']:.0f} codes/s "
          f"({report['gpt_params'] / 1e6:.1f} M parameters)", flush=True)

    model, params = random_transformer(maskgit_cfg)
    steps = int(maskgit_cfg.sampling.num_steps)
    maskgit = lambda: decode.sample_maskgit(model, params, jax.random.key(1), labels,  # noqa: E731
                                            num_steps=steps, schedule=maskgit_cfg.sampling.schedule)
    report["vqjax_maskgit_codes_per_sec"] = codes / median_seconds(maskgit, _REPEATS.value)
    print(f"  vqjax MaskGIT, {steps} steps: {report['vqjax_maskgit_codes_per_sec']:.0f} codes/s "
          f"({optim.count_params(params) / 1e6:.1f} M parameters)", flush=True)


def vqjax_train_step(report: dict) -> None:
    """The prior family's own train step (objective, optimizer, weight average) on random codes."""
    family = PriorFamily.__new__(PriorFamily)
    config = _GPT.value
    family.setup_training(config, _NUM_CODES.value, (_CODE_SIDE.value, _CODE_SIDE.value))
    batch = {"tokens": jax.random.randint(jax.random.key(2), (_TRAIN_BATCH.value, family.seq_len), 0,
                                          _NUM_CODES.value),
             "label": jnp.arange(_TRAIN_BATCH.value, dtype=jnp.int32) % max(1, family.model.num_classes)}
    state = jax.jit(family.create)(jax.random.key(0), batch)
    step = jax.jit(family.train_step, donate_argnums=0)
    carried = [state]

    def call():
        carried[0] = step(carried[0], batch)[0]
        return carried[0]

    seconds = median_seconds(call, _REPEATS.value, warmup=2)
    report["vqjax_gpt_train_maps_per_sec"] = _TRAIN_BATCH.value / seconds
    print(f"  vqjax GPT train step: {report['vqjax_gpt_train_maps_per_sec']:.1f} code maps/s "
          f"({1e3 * seconds:.0f} ms per step of {_TRAIN_BATCH.value})", flush=True)


def taming_gpt():
    """taming's minGPT of the GPT config's size. Its module imports `top_k_top_p_filtering`
    from Hugging Face `transformers` (not a dependency here): given here as top-k filtering,
    the only filtering this benchmark asks for."""
    if torch is None:
        raise ImportError("The peer needs PyTorch and taming-transformers: pip install -e '.[interop]', "
                          "or pass --nopeer.")
    if "transformers" not in sys.modules:
        def top_k_top_p_filtering(logits, top_k=0, top_p=1.0):
            if top_p not in (None, 1.0):
                raise NotImplementedError("top-p is not part of this benchmark")
            if not top_k:
                return logits
            kth = torch.topk(logits, top_k).values[:, -1:]
            return logits.masked_fill(logits < kth, -float("inf"))
        sys.modules["transformers"] = types.SimpleNamespace(top_k_top_p_filtering=top_k_top_p_filtering)
    from taming.modules.transformer import mingpt  # pylint: disable=import-outside-toplevel

    m = _GPT.value.model
    if int(m.mlp_dim) != 4 * int(m.embed_dim):
        raise ValueError(f"minGPT's MLP is 4x its width; the config has mlp_dim {m.mlp_dim} for "
                         f"embed_dim {m.embed_dim}.")
    torch.manual_seed(0)
    model = mingpt.GPT(vocab_size=_NUM_CODES.value, block_size=_CODE_SIDE.value ** 2, n_layer=int(m.num_layers),
                       n_head=int(m.num_heads), n_embd=int(m.embed_dim))
    return mingpt, model


def taming_figures(report: dict) -> None:
    mingpt, model = taming_gpt()
    report["taming_gpt_params"] = sum(p.numel() for p in model.parameters())
    top_k = int(_GPT.value.sampling.top_k) or None
    condition = torch.zeros((_BATCH.value, 1), dtype=torch.long)  # the class token
    length = _CODE_SIDE.value ** 2
    codes = _BATCH.value * length
    model.eval()
    for name, call in (
            ("sample", lambda: mingpt.sample(model, condition, length, sample=True, top_k=top_k)),
            ("sample_with_past", lambda: mingpt.sample_with_past(condition, model, length, top_k=top_k))):
        report[f"taming_{name}_codes_per_sec"] = codes / median_seconds(call, _REPEATS.value)
        print(f"  taming GPT, {name}: {report[f'taming_{name}_codes_per_sec']:.0f} codes/s "
              f"({report['taming_gpt_params'] / 1e6:.1f} M parameters)", flush=True)

    # Net2NetTransformer's training: cross entropy of every next token, AdamW (0.9, 0.95)
    # with weight decay 0.01 on Linear weights only.
    model.train()
    decay = [p for module in model.modules() if isinstance(module, torch.nn.Linear) for p in [module.weight]]
    decayed = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decayed]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=float(_GPT.value.optim.learning_rate), betas=(0.9, 0.95))
    tokens = torch.randint(0, _NUM_CODES.value, (_TRAIN_BATCH.value, length + 1))

    def step():
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_seconds(step, _REPEATS.value, warmup=2)
    report["taming_gpt_train_maps_per_sec"] = _TRAIN_BATCH.value / seconds
    print(f"  taming GPT train step: {report['taming_gpt_train_maps_per_sec']:.1f} code maps/s "
          f"({1e3 * seconds:.0f} ms per step of {_TRAIN_BATCH.value})", flush=True)


def main(argv):
    del argv
    print(f"Priors over {_CODE_SIDE.value}x{_CODE_SIDE.value} code maps of {_NUM_CODES.value} codes, "
          f"sampling batch {_BATCH.value}; jax {jax.__version__} on {jax.devices()[0].device_kind}"
          + (f", PyTorch {torch.__version__} with {torch.get_num_threads()} threads" if torch else ""))
    report = {"jax": jax.__version__, "batch": _BATCH.value, "train_batch": _TRAIN_BATCH.value}
    vqjax_sampling(report)
    vqjax_train_step(report)
    if _PEER.value:
        taming_figures(report)
        print("vqjax / taming: GPT sampling {:.1f}x taming's sample, {:.1f}x its sample_with_past; "
              "GPT train step {:.2f}x".format(
                  report["vqjax_gpt_codes_per_sec"] / report["taming_sample_codes_per_sec"],
                  report["vqjax_gpt_codes_per_sec"] / report["taming_sample_with_past_codes_per_sec"],
                  report["vqjax_gpt_train_maps_per_sec"] / report["taming_gpt_train_maps_per_sec"]))
    if _JSON.value:
        write_json(_JSON.value, report)


if __name__ == "__main__":
    app.run(main)
