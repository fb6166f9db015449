"""Images <-> code maps on files: `vqjax encode` (the token export: .npz of code maps for
downstream models), `vqjax decode`, `vqjax reconstruct`."""

from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np

from vqjax.apps import files, models
from vqjax.apps.files import InputError
from vqjax.core import images as images_lib, paths

# Keys of an encode .npz besides the code maps (one per image, by file name).
METADATA = ("num_codes", "downsampling_factor")


def encode_images(tokenizer, images: list[np.ndarray]) -> list[np.ndarray]:
    """uint8 [H, W, C] images (sides multiples of the tokenizer's factor) -> code maps [h, w, *tail]."""
    factor = tokenizer.downsampling_factor
    codes = []
    for image in images:
        if image.shape[0] % factor or image.shape[1] % factor:
            raise InputError(f"An image is {image.shape[1]}x{image.shape[0]} pixels; this tokenizer downsamples by "
                             f"{factor}, so crop it to multiples of {factor} (or use `vqjax compress`, which pads).")
        _, indices = tokenizer.encode(jnp.asarray(files.to_model_range(image)[None]))
        codes.append(np.asarray(indices)[0])
    return codes


def reconstruct_image(tokenizer, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> the tokenizer's uint8 reconstruction, the image edge-padded to the
    factor and cropped back."""
    factor = tokenizer.downsampling_factor
    padded = files.pad_to_multiple(image, factor, factor)
    reconstruction = images_lib.to_uint8(tokenizer.reconstruct(jnp.asarray(files.to_model_range(padded)[None])))[0]
    return reconstruction[: image.shape[0], : image.shape[1]]


def _names(image_paths) -> list[str]:
    return [paths.resolve(p).name for p in files.output_paths("", image_paths, "")]


def _encode_command(args) -> None:
    tokenizer, _ = models.load(args)
    images = files.read_images(args.images, int(tokenizer.config.data.get("channels", 3)))
    names = _names(args.images)
    clash = sorted(set(names) & set(METADATA))
    if clash:
        raise InputError(f"An image is named {clash[0]}, a name the .npz keeps for its metadata; rename it.")
    arrays = dict(zip(names, encode_images(tokenizer, images)))
    arrays.update(num_codes=np.int64(tokenizer.num_codes), downsampling_factor=np.int64(tokenizer.downsampling_factor))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    paths.write_bytes(args.out, buffer.getvalue())
    print(f"{args.out}: {len(images)} code maps ({', '.join(f'{n} {arrays[n].shape}' for n in names[:4])}"
          f"{', ...' if len(names) > 4 else ''}) of {tokenizer.num_codes} codes")


def read_codes(path: str, tokenizer) -> dict[str, np.ndarray]:
    """The code maps of an encode .npz, checked against `tokenizer`."""
    if not paths.is_file(path):
        raise InputError(f"No file at {path}: check the path.")
    try:
        # allow_pickle=False: loading a file never runs code from it.
        with np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not a .npz of code maps written by `vqjax encode` ({err}).") from None
    if "num_codes" in arrays and int(arrays["num_codes"]) != tokenizer.num_codes:
        raise InputError(f"{path} holds codes of a {int(arrays['num_codes'])}-code tokenizer; this one has "
                         f"{tokenizer.num_codes}: decode them with the tokenizer that encoded them.")
    codes = {key: value for key, value in arrays.items() if key not in METADATA}
    tail = tokenizer.index_tail
    for key, value in codes.items():
        if value.ndim != 2 + len(tail) or tuple(value.shape[2:]) != tail or not np.issubdtype(value.dtype, np.integer):
            raise InputError(f"{path}: {key} is {value.dtype} of shape {value.shape}, not an integer code map "
                             f"[h, w{''.join(f', {t}' for t in tail)}].")
        if value.size and (value.min() < 0 or value.max() >= tokenizer.num_codes):
            raise InputError(f"{path}: {key} has codes outside [0, {tokenizer.num_codes}).")
    if not codes:
        raise InputError(f"{path} holds no code maps.")
    return codes


def _decode_command(args) -> None:
    tokenizer, _ = models.load(args)
    codes = read_codes(args.codes, tokenizer)
    decoded = {name: images_lib.to_uint8(tokenizer.decode_indices(jnp.asarray(c[None])))[0] for name, c in codes.items()}
    for name, image in decoded.items():
        path = str(paths.join(args.out, f"{name}.png"))
        files.write_png(path, image)
        print(f"{path}: {image.shape[1]}x{image.shape[0]}")


def _reconstruct_command(args) -> None:
    tokenizer, _ = models.load(args)
    images = files.read_images(args.images, int(tokenizer.config.data.get("channels", 3)))
    outputs = files.output_paths(args.out, args.images, ".png")
    reconstructions = [reconstruct_image(tokenizer, image) for image in images]
    for path, image, reconstruction in zip(outputs, images, reconstructions):
        files.write_png(path, reconstruction)
        mse = np.mean((image.astype(np.float64) - reconstruction) ** 2)
        print(f"{path}: PSNR {10 * np.log10(255.0 ** 2 / max(mse, 1e-10)):.2f} dB")


def register(subparsers) -> None:
    encode = subparsers.add_parser("encode", help="images -> code maps (.npz), the token export",
                                   description="Writes one .npz with each image's code map under its file name "
                                               "(and num_codes, downsampling_factor).")
    models.add_arguments(encode, "its tokenizer encodes")
    encode.add_argument("images", nargs="+", metavar="IMAGE")
    encode.add_argument("--out", required=True, metavar="FILE.npz")
    encode.set_defaults(run=_encode_command)

    decode = subparsers.add_parser("decode", help="code maps (.npz) -> PNG images",
                                   description="Decodes every code map of a `vqjax encode` .npz to OUT/<name>.png.")
    models.add_arguments(decode, "its tokenizer decodes")
    decode.add_argument("codes", metavar="FILE.npz")
    decode.add_argument("--out", required=True, metavar="DIR")
    decode.set_defaults(run=_decode_command)

    reconstruct = subparsers.add_parser("reconstruct", help="images -> the tokenizer's reconstructions (PNG)",
                                        description="Encodes and decodes each image (edge-padded to the "
                                                    "tokenizer's factor, cropped back) and prints its PSNR.")
    models.add_arguments(reconstruct, "its tokenizer reconstructs")
    reconstruct.add_argument("images", nargs="+", metavar="IMAGE")
    reconstruct.add_argument("--out", required=True, metavar="DIR")
    reconstruct.set_defaults(run=_reconstruct_command)
