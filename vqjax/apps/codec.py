"""An entropy-coded image codec: images -> a tokenizer's code maps -> a bitstream coded under a
prior's probabilities (constriction's range coder), and back.

    codec = Codec(vqjax.pretrained.load(TOKENIZER_DIR), vqjax.prior.load(PRIOR_DIR))
    data = codec.compress([image])[0]      # uint8 [H, W, C] -> bytes
    image = codec.decompress(data)         # the tokenizer's reconstruction, uint8

Without a prior every code costs log2 K bits (the uniform baseline). A GPT prior codes a code
map in raster order, each code under p(code | codes before it); a MaskGIT prior in a fixed order
of `steps` groups, each group under p(code | codes of the groups before it), the MaskGIT
decoding schedule with a fixed order in place of the sampler's confidence order.

Exact round trip. The decoder must see the encoder's probabilities bit for bit, so both compute
them with one program at one shape, on a fixed batch of `batch_size` code maps (padded). A GPT
prior runs position by position with its key/value cache (`Transformer.decode_step`), the same
compiled step on both sides: the encoder feeds it the true codes, the decoder the codes it has
just decoded, which are the same. A MaskGIT prior is applied to the whole map per pass, the
positions not known yet replaced by the mask token. Each row of a matrix product sums in an
order that depends on the shapes alone, so a code map gets the same probabilities in any batch.
constriction quantises those float32 probabilities to integers deterministically (its leaky
quantiser: every code keeps a non-zero probability). Across backends (a file encoded on a GPU,
decoded on a CPU) the float probabilities differ in their last bits and the decoded codes would
differ: the header records the backend, a checksum of the code map catches any mismatch, and
decoding then fails with a sentence instead of returning a wrong image.

File format (version 2; version 1 coded GPT priors with whole-map passes), little-endian: the
header below, then the range coder's 32-bit words. The header's `models` field is a hash of the tokenizer's and the prior's weights, so a file is
never decoded with other models; the final CRC-32 covers the header and the payload, so a
corrupted or truncated file is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import struct
import zlib
from typing import Optional, Sequence

import constriction
import jax
import jax.numpy as jnp
import numpy as np

from vqjax.apps import files, tiles
from vqjax.apps.files import InputError
from vqjax.core import images as images_lib, paths
from vqjax.inference.prior import Prior
from vqjax.inference.tokenizer import Tokenizer
from vqjax.nets.transformer import Transformer

FORMAT_VERSION = 2
MAGIC = b"VQJX"
SUFFIX = ".vqj"
PRIORS = ("uniform", "gpt", "maskgit")
PLATFORMS = ("cpu", "gpu", "tpu", "other")


@dataclasses.dataclass(frozen=True)
class Header:
    prior: str  # one of PRIORS
    platform: str  # the backend that computed the probabilities, one of PLATFORMS
    height: int  # the image's size before padding
    width: int
    channels: int
    code_shape: tuple  # (h, w, depth) of the padded image's code map (depth 1: one code per position)
    steps: int  # MaskGIT's decoding steps (0 otherwise)
    label: int  # the prior's condition (its null label: unconditional)
    batch_size: int  # the batch the prior was applied to (the probabilities depend on it)
    models: bytes  # MODELS_ID_BYTES of the models' hash
    codes_crc: int  # CRC-32 of the code map (int32), to catch probabilities that differ from the encoder's
    payload_size: int  # bytes after the header (read by unpack; pack counts the payload it is given)

    # magic, version, prior, platform, channels, height, width, h, w, depth, steps, label, batch,
    # models, codes_crc, payload_size; then the CRC-32 of everything before it and the payload.
    LAYOUT = struct.Struct("<4sBBBBHHHHBBHB8sII")
    CRC = struct.Struct("<I")
    SIZE = LAYOUT.size + CRC.size

    def pack(self, payload: bytes) -> bytes:
        try:
            fields = self.LAYOUT.pack(MAGIC, FORMAT_VERSION, PRIORS.index(self.prior), PLATFORMS.index(self.platform),
                                      self.channels, self.height, self.width, *self.code_shape, self.steps,
                                      self.label, self.batch_size, self.models, self.codes_crc, len(payload))
        except struct.error as err:
            raise InputError(f"The image or its code map is too large for the file format ({err}): images up to "
                             "65535 x 65535 pixels, code maps up to 255 codes deep.") from None
        return fields + self.CRC.pack(zlib.crc32(fields + payload)) + payload

    @classmethod
    def unpack(cls, data: bytes, name: str) -> tuple["Header", bytes]:
        """(header, payload) of a file's bytes; a sentence naming `name` if they are not a whole,
        intact vqjax bitstream of a version this code reads."""
        if len(data) < 5 or data[:4] != MAGIC:
            raise InputError(f"{name} is not a file written by `vqjax compress` (it does not start with {MAGIC!r}).")
        if data[4] != FORMAT_VERSION:
            raise InputError(f"{name} is in format version {data[4]}; this vqjax reads version {FORMAT_VERSION}: "
                             "decompress it with the vqjax release that wrote it.")
        if len(data) < cls.SIZE:
            raise InputError(f"{name} is truncated: {len(data)} bytes, shorter than the {cls.SIZE}-byte header.")
        (_, _, prior, platform, channels, height, width, h, w, depth, steps, label, batch, models, codes_crc,
         payload_size) = cls.LAYOUT.unpack_from(data)
        payload = data[cls.SIZE:]
        if len(payload) != payload_size:
            raise InputError(f"{name} is truncated or has bytes appended: its header announces {payload_size} "
                             f"bytes of codes, it holds {len(payload)}.")
        (crc,) = cls.CRC.unpack_from(data, cls.LAYOUT.size)
        if zlib.crc32(data[:cls.LAYOUT.size] + payload) != crc:
            raise InputError(f"{name} is corrupted: its checksum does not match its contents.")
        if prior >= len(PRIORS) or platform >= len(PLATFORMS) or payload_size % 4:
            raise InputError(f"{name} is corrupted: its header names no known prior or backend.")
        header = cls(PRIORS[prior], PLATFORMS[platform], height, width, channels, (h, w, depth), steps, label,
                     batch, models, codes_crc, payload_size)
        return header, payload


MODELS_ID_BYTES = 8


def models_id(tokenizer: Tokenizer, prior: Optional[Prior]) -> bytes:
    """A hash of the weights that define the code maps and their probabilities (the tokenizer's
    network and quantizer, the prior's network), by name, dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=MODELS_ID_BYTES)
    trees = {"tokenizer": (tokenizer.params, tokenizer.quantizer_state)}
    if prior is not None:
        trees["prior"] = prior.params
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(trees), key=lambda item: jax.tree_util.keystr(item[0])):
        leaf = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.digest()


def codes_checksum(codes: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(codes, "<i4").tobytes())


def platform_name() -> str:
    backend = jax.default_backend()
    return backend if backend in PLATFORMS else "other"


def reveal_counts(length: int, steps: int) -> list[int]:
    """Codes made known at each of MaskGIT's `steps` (MaskGIT's cosine schedule: after step s a
    fraction cos(pi/2 (s+1)/steps) of the codes is still unknown; every step reveals at least
    one). Plain Python floats and integers, so encoder and decoder agree on any machine."""
    if not 1 <= steps <= length:
        raise InputError(f"MaskGIT coding takes between 1 and {length} steps for {length}-code maps; got {steps}.")
    unknown, counts = length, []
    for step in range(steps):
        remaining = steps - step - 1  # steps after this one, each revealing at least one code
        target = 0 if remaining == 0 else math.floor(length * math.cos(math.pi / 2 * (step + 1) / steps) + 1e-6)
        target = min(max(target, remaining), unknown - 1)
        counts.append(unknown - target)
        unknown = target
    return counts


def coding_order(length: int) -> np.ndarray:
    """MaskGIT's fixed order of positions: sorted by a multiplicative hash of the position
    (Knuth's 2654435761, odd, so a bijection mod 2^32), which spreads each step's codes over
    the map instead of filling it in raster order; integer arithmetic, the same everywhere."""
    keys = (np.arange(length, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return np.argsort(keys, kind="stable")


@functools.partial(jax.jit, static_argnums=0)
def _prior_probabilities(model, params, tokens, labels) -> jax.Array:
    """The prior's probabilities [B, L, K] (float32)."""
    return jax.nn.softmax(model.apply({"params": params}, tokens, labels), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _gpt_first_step(model, params, labels) -> tuple[jax.Array, dict]:
    """Position 0 of a GPT prior with its key/value cache: (probabilities [B, K], the new cache)."""
    logits, updated = model.apply({"params": params}, jnp.zeros_like(labels), labels, 0,
                                  method=Transformer.decode_step, mutable=["cache"])
    return jax.nn.softmax(logits, axis=-1), updated["cache"]


@functools.partial(jax.jit, static_argnums=0)
def _gpt_next_step(model, params, cache, previous, labels, position) -> tuple[jax.Array, dict]:
    """Position `position` > 0, given the code before it: (probabilities [B, K], the cache)."""
    logits, updated = model.apply({"params": params, "cache": cache}, previous, labels, position,
                                  method=Transformer.decode_step, mutable=["cache"])
    return jax.nn.softmax(logits, axis=-1), updated["cache"]


class _CachedGPT:
    """A GPT prior's probabilities of `labels`' rows position by position, in batches of exactly
    `batch_size` rows (padded with the null label), each batch with its own key/value cache."""

    def __init__(self, prior: Prior, labels: np.ndarray, batch_size: int):
        self.model, self.params, self.count = prior.model, prior.params, len(labels)
        pad = -len(labels) % batch_size
        self.labels = np.concatenate([labels, np.full((pad,), prior.model.null_label, np.int32)]).reshape(
            -1, batch_size)
        self.caches = [None] * len(self.labels)

    def next(self, position: int, previous: Optional[np.ndarray]) -> np.ndarray:
        """Probabilities [count, K] of the codes at `position` (called for 0, 1, ... in order),
        given the codes at `position - 1` (None at 0)."""
        if previous is not None:
            previous = np.concatenate([previous, np.zeros(self.labels.size - self.count, np.int32)]).reshape(
                self.labels.shape)
        out = []
        for i, labels in enumerate(self.labels):
            if position == 0:
                p, self.caches[i] = _gpt_first_step(self.model, self.params, jnp.asarray(labels))
            else:
                p, self.caches[i] = _gpt_next_step(self.model, self.params, self.caches[i], jnp.asarray(previous[i]),
                                                   jnp.asarray(labels), jnp.int32(position))
            out.append(np.asarray(p))
        return np.concatenate(out)[:self.count]


class Codec:
    """Compresses images to bytes and back with a tokenizer and, optionally, a GPT or MaskGIT
    prior over its code maps (see the module's docstring).

    `steps`: MaskGIT's coding steps (default: the prior's `sampling.num_steps`); more steps give
    each code more known neighbours, so fewer bits, at one prior pass per step.
    `batch_size`: code maps per prior pass; decoding a file needs the batch it was coded with
    (the header carries it).
    """

    def __init__(self, tokenizer: Tokenizer, prior: Optional[Prior] = None, *, steps: Optional[int] = None,
                 batch_size: int = 8):
        if prior is not None and prior.tokenizer is not tokenizer and models_id(prior.tokenizer, None) != models_id(
                tokenizer, None):
            raise InputError("The prior was trained on another tokenizer's codes; pass the tokenizer its "
                             "config.tokenizer_dir names (or only --prior).")
        self.tokenizer, self.prior = tokenizer, prior
        self.kind = "uniform" if prior is None else ("gpt" if prior.model.causal else "maskgit")
        self.batch_size = int(batch_size)
        self.factor = tokenizer.downsampling_factor
        self.depth = int(math.prod(tokenizer.index_tail))
        self.num_codes = tokenizer.num_codes
        self.models = models_id(tokenizer, prior)
        if prior is not None:
            self.tile = prior.code_shape[:2]  # code maps are coded in tiles of the prior's map
            self.length = int(math.prod(prior.code_shape))
            default_steps = int(prior.config.sampling.get("num_steps", 8)) if self.kind == "maskgit" else 0
            self.steps = default_steps if steps is None else int(steps)
            if self.kind == "maskgit":
                reveal_counts(self.length, self.steps)  # checks the number of steps
        else:
            self.tile, self.length, self.steps = None, 0, 0

    # ---------------------------------------------------------------- code maps <-> sequences

    @property
    def pixel_multiple(self) -> tuple[int, int]:
        """Image sides are padded to multiples of these (`tiles.padding_multiple`)."""
        return tiles.padding_multiple(self.tokenizer, self.prior)

    def _to_rows(self, codes: np.ndarray) -> np.ndarray:
        """A code map [h, w, depth] -> its tiles as the prior's sequences [T, L]."""
        return tiles.split(codes[None], self.tile)

    def _from_rows(self, rows: np.ndarray, code_shape: tuple) -> np.ndarray:
        return tiles.join(rows, (1, *code_shape), self.tile)[0]

    def _passes(self, steps: int):
        """MaskGIT: (known positions before the pass, positions coded under its output) per
        prior pass, over `steps` steps of the fixed order."""
        order = coding_order(self.length)
        bounds = np.cumsum([0] + reveal_counts(self.length, steps))
        return [(order[:start], order[start:end]) for start, end in zip(bounds[:-1], bounds[1:])]

    def _pass_input(self, rows: np.ndarray, known: np.ndarray) -> np.ndarray:
        """MaskGIT's input for one pass: the known codes, the rest the mask token."""
        tokens = np.full(rows.shape, self.prior.model.mask_token, np.int32)
        tokens[:, known] = rows[:, known]
        return tokens

    def _pass_probabilities(self, rows: np.ndarray, labels: np.ndarray, steps: int, batch_size: int):
        """Per prior pass in coding order: (positions coded, their distributions [N, n, K]) for
        the code rows [N, L]. `rows` is read pass by pass, when the next pass is asked for, so
        the decoder fills in each pass's codes before the pass that depends on them."""
        if self.kind == "gpt":
            prior = _CachedGPT(self.prior, labels, batch_size)
            for position in range(self.length):
                previous = None if position == 0 else rows[:, position - 1]
                yield np.array([position]), prior.next(position, previous)[:, None]
            return
        for known, coded in self._passes(steps):
            yield coded, self._probabilities(self._pass_input(rows, known), labels, batch_size)[:, coded]

    def _probabilities(self, tokens: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
        """The prior's probabilities for `tokens` [N, L], applied in batches of exactly
        `batch_size` rows (the shape decides the rounding)."""
        out = []
        for start in range(0, len(tokens), batch_size):
            chunk, chunk_labels = tokens[start:start + batch_size], labels[start:start + batch_size]
            pad = batch_size - len(chunk)
            chunk = np.concatenate([chunk, np.zeros((pad, self.length), np.int32)])
            chunk_labels = np.concatenate([chunk_labels, np.full((pad,), self.prior.model.null_label, np.int32)])
            p = _prior_probabilities(self.prior.model, self.prior.params, jnp.asarray(chunk), jnp.asarray(chunk_labels))
            out.append(np.asarray(p)[:len(tokens) - start])
        return np.concatenate(out)

    # ---------------------------------------------------------------- images <-> code maps

    def encode_codes(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 images [H, W, C] -> code maps [h, w, depth] of the padded images."""
        channels = int(self.tokenizer.config.data.get("channels", 3))
        codes = []
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[-1] != channels or image.dtype != np.uint8:
                raise InputError(f"Image {i} is {image.dtype} of shape {image.shape}; the tokenizer takes uint8 "
                                 f"[height, width, {channels}].")
            padded = files.pad_to_multiple(image, *self.pixel_multiple)
            _, indices = self.tokenizer.encode(files.to_model_range(padded)[None])
            codes.append(np.asarray(indices, np.int32)[0].reshape(*indices.shape[1:3], self.depth))
        return codes

    def decode_codes(self, codes: np.ndarray, height: int, width: int) -> np.ndarray:
        """A code map [h, w, depth] -> the uint8 image [height, width, C] (decoded alone: the
        decoder's rounding is the same for every file)."""
        indices = codes.reshape(*codes.shape[:2], *self.tokenizer.index_tail)[None]
        image = images_lib.to_uint8(self.tokenizer.decode_indices(jnp.asarray(indices)))[0]
        return image[:height, :width]

    # ---------------------------------------------------------------- compress / decompress

    def _symbols_and_probabilities(self, rows_per_image: list[np.ndarray], labels: np.ndarray):
        """Per image: its codes in coding order (pass by pass, within a pass position by
        position, within a position tile by tile) and their distributions [n, K]."""
        all_rows = np.concatenate(rows_per_image)
        row_labels = np.concatenate([np.full(len(r), label, np.int32) for r, label in zip(rows_per_image, labels)])
        symbols, probabilities = [], []
        for coded, p in self._pass_probabilities(all_rows, row_labels, self.steps, self.batch_size):
            symbols.append(all_rows[:, coded])
            probabilities.append(p)
        bounds = np.cumsum([0] + [len(r) for r in rows_per_image])
        for start, end in zip(bounds[:-1], bounds[1:]):
            s = np.concatenate([x[start:end].T.reshape(-1) for x in symbols])
            p = np.concatenate([x[start:end].transpose(1, 0, 2).reshape(-1, self.num_codes) for x in probabilities])
            yield s, p

    def compress_with_bits(self, images: Sequence[np.ndarray], labels: Optional[Sequence[int]] = None):
        """[(file bytes, the model's information content of the codes in bits: -log2 p)] per image."""
        labels = self._labels(labels, len(images))
        codes = self.encode_codes(images)
        headers = [Header(self.kind, platform_name(), image.shape[0], image.shape[1], image.shape[2],
                          (*c.shape[:2], self.depth), self.steps, int(label), self.batch_size, self.models,
                          codes_checksum(c), 0) for image, c, label in zip(images, codes, labels)]
        if self.prior is None:
            model = constriction.stream.model.Uniform(self.num_codes)
            streams = []
            for c in codes:
                encoder = constriction.stream.queue.RangeEncoder()
                encoder.encode(c.reshape(-1).astype(np.int32), model)
                streams.append((encoder.get_compressed(), c.size * math.log2(self.num_codes)))
        else:
            model = constriction.stream.model.Categorical(perfect=False)
            streams = []
            for symbols, p in self._symbols_and_probabilities([self._to_rows(c) for c in codes], labels):
                encoder = constriction.stream.queue.RangeEncoder()
                encoder.encode(symbols.astype(np.int32), model, p)
                chosen = p[np.arange(len(symbols)), symbols].astype(np.float64) / p.sum(-1, dtype=np.float64)
                streams.append((encoder.get_compressed(), float(-np.log2(chosen).sum())))
        return [(header.pack(words.astype("<u4").tobytes()), bits) for header, (words, bits) in zip(headers, streams)]

    def compress(self, images: Sequence[np.ndarray], labels: Optional[Sequence[int]] = None) -> list[bytes]:
        """uint8 images [H, W, C] (any sizes) -> one bitstream each."""
        return [data for data, _ in self.compress_with_bits(images, labels)]

    def _labels(self, labels, count: int) -> np.ndarray:
        if self.prior is None:
            return np.zeros((count,), np.int32)
        null = self.prior.model.null_label
        labels = np.full((count,), null, np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
        if len(labels) != count or labels.min() < 0 or labels.max() > null:
            raise InputError(f"Labels must be one class in [0, {null}] per image ({null} = unconditional); "
                             f"got {labels.tolist()} for {count} images.")
        return labels

    def read_header(self, data: bytes, name: str = "the bitstream") -> tuple[Header, bytes]:
        """The file's header and payload, checked against these models."""
        header, payload = Header.unpack(data, name)
        if header.prior != self.kind:
            hint = "--tokenizer alone" if header.prior == "uniform" else f"--prior with a {header.prior} prior"
            raise InputError(f"{name} was compressed with the {header.prior} prior, not this {self.kind} one: "
                             f"decompress it with {hint}, the models that compressed it.")
        if header.models != self.models:
            raise InputError(f"{name} was compressed with other models (their weights differ from these): "
                             "decompress it with the tokenizer and prior that compressed it.")
        multiple = self.pixel_multiple
        expected = (-(-header.height // multiple[0]) * multiple[0] // self.factor,
                    -(-header.width // multiple[1]) * multiple[1] // self.factor, self.depth)
        if tuple(header.code_shape) != expected:
            raise InputError(f"{name}'s code map is {header.code_shape}, not the {expected} these models give a "
                             f"{header.height}x{header.width} image: the file is damaged.")
        return header, payload

    def decompress_codes(self, data: bytes, name: str = "the bitstream") -> tuple[Header, np.ndarray]:
        """The file's header and its code map [h, w, depth], checked against the encoder's checksum."""
        header, payload = self.read_header(data, name)
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        if self.prior is None:
            flat = decoder.decode(constriction.stream.model.Uniform(self.num_codes), int(math.prod(header.code_shape)))
            codes = np.asarray(flat, np.int32).reshape(header.code_shape)
        else:
            codes = self._decode_rows(decoder, header)
        if codes_checksum(codes) != header.codes_crc:
            raise InputError(
                f"{name} decoded to other codes than were encoded: the prior's probabilities on this machine "
                f"({platform_name()}) differ from those of the machine that compressed it ({header.platform}); "
                f"decompress it on a {header.platform} machine.")
        return header, codes

    def _decode_rows(self, decoder, header: Header) -> np.ndarray:
        model = constriction.stream.model.Categorical(perfect=False)
        th, tw = self.tile
        num_rows = (header.code_shape[0] // th) * (header.code_shape[1] // tw)
        rows = np.zeros((num_rows, self.length), np.int32)
        labels = np.full((num_rows,), header.label, np.int32)
        # The file's steps and batch, whatever this codec would compress with.
        for coded, p in self._pass_probabilities(rows, labels, header.steps, header.batch_size):  # p: [T, n, K]
            flat = decoder.decode(model, p.transpose(1, 0, 2).reshape(-1, self.num_codes))
            rows[:, coded] = np.asarray(flat, np.int32).reshape(len(coded), num_rows).T
        return self._from_rows(rows, header.code_shape)

    def decompress(self, data: bytes, name: str = "the bitstream") -> np.ndarray:
        """A file's bytes -> the uint8 image [H, W, C]: the tokenizer's decoding of the codes it holds."""
        header, codes = self.decompress_codes(data, name)
        return self.decode_codes(codes, header.height, header.width)


# ---------------------------------------------------------------- the `vqjax` subcommands


def _compress_command(args) -> None:
    from vqjax.apps import models

    tokenizer, prior = models.load(args)
    codec = Codec(tokenizer, prior, steps=args.steps, batch_size=args.batch_size)
    channels = int(tokenizer.config.data.get("channels", 3))
    images = files.read_images(args.images, channels)
    outputs = files.output_paths(args.out, args.images, SUFFIX)
    labels = None if args.label is None else [args.label] * len(images)
    results = []
    for start in _progress(range(0, len(images), codec.batch_size), "compress", len(images) > codec.batch_size):
        chunk = slice(start, start + codec.batch_size)
        results += codec.compress_with_bits(images[chunk], None if labels is None else labels[chunk])
    for path, image, (data, bits) in zip(outputs, images, results):
        paths.write_bytes(path, data)
        pixels = image.shape[0] * image.shape[1]
        print(f"{path}: {len(data)} bytes, {8 * len(data) / pixels:.4f} bits per pixel "
              f"({8 * (len(data) - Header.SIZE) / pixels:.4f} without the {Header.SIZE}-byte header; "
              f"the {codec.kind} prior's estimate {bits / pixels:.4f})")


def _decompress_command(args) -> None:
    from vqjax.apps import models

    tokenizer, prior = models.load(args)
    codec = Codec(tokenizer, prior)
    inputs = []
    for path in args.files:
        if not paths.is_file(path):
            raise InputError(f"No file at {path}: check the path.")
        inputs.append(paths.read_bytes(path))
    outputs = files.output_paths(args.out, args.files, ".png")
    # Every file is decoded before any is written: a bad one named last leaves no outputs behind.
    decoded = [codec.decompress(data, str(path)) for data, path in
               zip(inputs, _progress(args.files, "decompress", len(inputs) > 1))]
    for path, image in zip(outputs, decoded):
        files.write_png(path, image)
        print(f"{path}: {image.shape[1]}x{image.shape[0]}")


def _progress(iterable, what: str, show: bool):
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=what)


def register(subparsers) -> None:
    compress = subparsers.add_parser(
        "compress", help="images -> entropy-coded files (.vqj) of their code maps",
        description="Encodes each image (PNG, JPEG) to its tokenizer's code map and writes OUT/<name>.vqj, the "
                    "codes range-coded under the prior's probabilities (each code log2 K bits with --tokenizer alone).")
    from vqjax.apps import models

    models.add_arguments(compress, "its probabilities code the codes")
    compress.add_argument("images", nargs="+", metavar="IMAGE")
    compress.add_argument("--out", required=True, metavar="DIR", help="output directory")
    compress.add_argument("--steps", type=int, default=None,
                          help="MaskGIT priors: coding steps (default: the prior's sampling.num_steps)")
    compress.add_argument("--label", type=int, default=None,
                          help="class-conditional priors: the class of every image (default: unconditional)")
    compress.add_argument("--batch-size", type=int, default=8, help="code maps per prior pass")
    compress.set_defaults(run=_compress_command)

    decompress = subparsers.add_parser(
        "decompress", help=".vqj files -> PNG images (the tokenizer's reconstructions)",
        description="Decodes each file written by `vqjax compress` with the same models and writes OUT/<name>.png.")
    models.add_arguments(decompress, "the one the files were compressed with")
    decompress.add_argument("files", nargs="+", metavar="FILE")
    decompress.add_argument("--out", required=True, metavar="DIR", help="output directory")
    decompress.set_defaults(run=_decompress_command)
