r"""Anomaly detection with `vqjax score`'s scores (vqjax/apps/anomaly.py), beside trivial peers
measured in the same run.

(a) One-class CIFAR-10 (`--cifar DIR`, a folder with train/<class>/*.jpg and test/<class>/*.jpg):
for each class of --classes, a tokenizer (and with --prior_steps a prior) is trained on that
class's training images only, less --reference held-out ones; the whole test split is scored
(anomalous = any other class). Image AUROC / AUPRC per score kind, and their mean over classes.
(b) Synthetic defects (`--synthetic`): defects with known masks (noise squares, patches of
another photograph, scratches) pasted into test crops of the embedded photographs
(vqjax/data/images.py); a tokenizer trained on the embedded training crops (or --tokenizer DIR,
and --prior DIR) scores the defective crops and their clean originals: image AUROC / AUPRC and
pixel AUROC of the maps, per defect kind and over all.
(c) MVTec AD (`--mvtec DIR`, a category's folder with train/good, test/<defect>,
ground_truth/<defect>/*_mask.png, or a folder of such categories): per category, a tokenizer
(and prior) trained on train/good at --size pixels; image AUROC / AUPRC and pixel AUROC.

The combined score standardises each score by its median and MAD over --reference normal images
held out of training (the `vqjax score --reference` rule). Peers: the distance to the mean normal
training image (per pixel, and its mean per image), and a high-pass residual (|x - 3x3 box blur|):
what a detector must beat to have learnt anything about the images. Scores are compared with
scikit-learn's roc_auc_score and average_precision_score (`pip install -e '.[bench]'`).

Commands, from the repository root (workdirs under --workdir are reused when present):

  tar -xzf ../shared/data/cifar10_jpeg.tar.gz -C /tmp
  python bench/anomaly.py --cifar=/tmp/cifar10 --classes=airplane --steps=300 --prior_steps=300
  python bench/anomaly.py --synthetic --steps=300 --prior_steps=300
  python bench/anomaly.py --mvtec=/data/mvtec_ad/bottle --size=128 --steps=2000 --prior_steps=2000
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import write_json  # noqa: E402
import vqjax.pretrained  # noqa: E402
import vqjax.prior  # noqa: E402
from vqjax.apps import anomaly, files  # noqa: E402

_CIFAR = flags.DEFINE_string("cifar", "", "Image folder with train/<class>/ and test/<class>/ (protocol a).")
_CLASSES = flags.DEFINE_list("classes", [], "CIFAR classes (folder names) to run; default all.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Synthetic defects in the embedded photographs (protocol b).")
_MVTEC = flags.DEFINE_string("mvtec", "", "An MVTec AD category folder, or a folder of them (protocol c).")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "(b) A tokenizer to score with instead of training one.")
_PRIOR = flags.DEFINE_string("prior", "", "(b) A prior (with its tokenizer) to score with instead of training one.")
_TOKENIZER_CONFIG = flags.DEFINE_string("tokenizer_config", "vqvae_quickstart",
                                        "The experiments/configs module of the tokenizers trained.")
_PRIOR_CONFIG = flags.DEFINE_string("prior_config", "prior_quickstart",
                                    "The experiments/configs module of the priors trained (unconditional).")
_PRIOR_KIND = flags.DEFINE_enum("prior_kind", "maskgit", ["maskgit", "gpt"], "The priors trained.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps of each tokenizer.")
_PRIOR_STEPS = flags.DEFINE_integer("prior_steps", 0, "Training steps of each prior (0: no prior).")
_BATCH = flags.DEFINE_integer("batch", 32, "Training batch of tokenizers and priors.")
_SIZE = flags.DEFINE_integer("size", 128, "(c) Image side the MVTec images are resized to.")
_REFERENCE = flags.DEFINE_integer("reference", 200, "Normal images held out of training to standardise the scores.")
_MAX_TEST = flags.DEFINE_integer("max_test", 0, "(a, c) At most this many test images, evenly spaced (0: all).")
_NUM_DEFECTS = flags.DEFINE_integer("num_defects", 300, "(b) Defective crops (and as many clean ones).")
_GROUPS = flags.DEFINE_integer("groups", anomaly.DEFAULT_NUM_GROUPS, "MaskGIT pseudo-likelihood passes.")
_SCORE_BATCH = flags.DEFINE_integer("score_batch", 128, "Images per scoring call.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/anomaly_bench", "Where the trained models are written.")
_JSON = flags.DEFINE_string("json", "", "Also write the figures here as JSON.")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


# --- models ------------------------------------------------------------------------------------

def train_tokenizer(workdir: str, data: dict) -> str:
    """A tokenizer of --tokenizer_config trained --steps steps on `data` (config.data fields)."""
    from vqjax.train import experiment

    config = importlib.import_module(f"experiments.configs.{_TOKENIZER_CONFIG.value}").get_config()
    config.data.update(batch_size=_BATCH.value, **data)
    config.train.update(num_steps=_STEPS.value, eval_steps=_STEPS.value, ckpt_steps=_STEPS.value,
                        log_steps=max(1, _STEPS.value // 5))
    config.evals.num_eval_batches = 2  # reconstruction metrics of the normal images: a glance
    experiment.train_and_evaluate(config, workdir)
    return workdir


def train_prior(workdir: str, tokenizer_dir: str) -> str:
    """An unconditional prior of --prior_config trained --prior_steps steps on the tokenizer's
    codes of its own training data."""
    from vqjax.train import experiment

    module = importlib.import_module(f"experiments.configs.{_PRIOR_CONFIG.value}")
    config = module.get_config("gpt" if _PRIOR_KIND.value == "gpt" else None)
    config.tokenizer_dir = tokenizer_dir
    config.model.num_classes = 0
    config.loss.cond_drop = 0.0
    config.data.batch_size = _BATCH.value
    config.train.update(num_steps=_PRIOR_STEPS.value, eval_steps=_PRIOR_STEPS.value,
                        ckpt_steps=_PRIOR_STEPS.value, log_steps=max(1, _PRIOR_STEPS.value // 5))
    config.evals.num_eval_batches = 2
    config.sampling.num_samples = 8
    experiment.train_and_evaluate(config, workdir)
    return workdir


def trained_models(workdir: str, data: dict):
    """(tokenizer, prior or None) trained in workdir/tokenizer and workdir/prior."""
    tokenizer_dir = train_tokenizer(os.path.join(workdir, "tokenizer"), data)
    if _PRIOR_STEPS.value <= 0:
        return vqjax.pretrained.load(tokenizer_dir), None
    prior = vqjax.prior.load(train_prior(os.path.join(workdir, "prior"), tokenizer_dir))
    return prior.tokenizer, prior


# --- scores, peers and metrics -----------------------------------------------------------------

@dataclasses.dataclass
class Scored:
    """Image scores {kind: [N]} and maps {kind: [N x [H, W]]} of one test set."""

    images: dict
    maps: dict


def score(model, images: list, reference: list, train_mean: np.ndarray) -> Scored:
    """The app's scores and maps, the combined score against `reference`, and the two peers."""
    options = dict(num_groups=_GROUPS.value, batch_size=_SCORE_BATCH.value, progress=True)
    results = anomaly.score_images(model, images, **options)
    reference_results = anomaly.score_images(model, reference, **options)
    kinds = {"reconstruction": [r.reconstruction_mse for r in results]}
    reference_kinds = {"reconstruction": [r.reconstruction_mse for r in reference_results]}
    maps = {"reconstruction": [r.reconstruction_error for r in results]}
    if results[0].code_nll is not None:
        kinds["prior"] = [r.prior_nats_per_code for r in results]
        reference_kinds["prior"] = [r.prior_nats_per_code for r in reference_results]
        maps["prior"] = [r.code_nll for r in results]
        # The combined map: each map standardised by the median and MAD of the reference images'
        # map values (pixels, not images: the spread of one pixel's error is not an image mean's).
        reference_maps = {"reconstruction": [r.reconstruction_error for r in reference_results],
                          "prior": [r.code_nll for r in reference_results]}
        standardisers = {k: anomaly.robust_standardiser(np.concatenate([m.ravel() for m in v]))
                         for k, v in reference_maps.items()}
        maps["combined"] = [np.mean([(maps[k][i] - standardisers[k][0]) / standardisers[k][1] for k in kinds], 0)
                            for i in range(len(images))]
    kinds["combined"] = list(anomaly.combined_scores(kinds, reference_kinds))
    peers = peer_maps(images, train_mean)
    for name, peer in peers.items():
        maps[name] = peer
        kinds[name] = [float(m.mean()) for m in peer]
    return Scored(kinds, maps)


def peer_maps(images: list, train_mean: np.ndarray) -> dict:
    """The peers' maps: squared distance to the mean normal image (where sizes agree) and the
    high-pass residual |x - 3x3 box blur(x)|, both averaged over channels."""
    from scipy import ndimage

    peers = {"high-pass residual": [np.mean(np.abs(x - ndimage.uniform_filter(x, size=(3, 3, 1), mode="nearest")), -1)
                                    for x in images]}
    if all(x.shape == train_mean.shape for x in images):
        peers["distance to mean image"] = [np.mean(np.square(x - train_mean), -1) for x in images]
    return peers


def image_metrics(anomalous: np.ndarray, scores) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {"image_auroc": float(roc_auc_score(anomalous, scores)),
            "image_auprc": float(average_precision_score(anomalous, scores)),
            "chance_auprc": float(np.mean(anomalous))}  # AUPRC of a random score: the anomalous fraction


def pixel_auroc(masks: list, maps: list) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.concatenate([m.ravel() for m in masks]).astype(bool),
                               np.concatenate([m.ravel() for m in maps])))


def evaluate(scored: Scored, anomalous: np.ndarray, masks=None) -> list[dict]:
    """One row per score kind: image AUROC / AUPRC, and pixel AUROC when masks are known."""
    rows = []
    for kind, values in scored.images.items():
        row = {"score": kind, **image_metrics(anomalous, values)}
        if masks is not None and kind in scored.maps:
            row["pixel_auroc"] = pixel_auroc(masks, scored.maps[kind])
        rows.append(row)
    return rows


def format_table(rows: list[dict], first: str) -> str:
    columns = [(first, "{}"), ("score", "{}"), ("image_auroc", "{:.3f}"), ("image_auprc", "{:.3f}"),
               ("chance_auprc", "{:.3f}"), ("pixel_auroc", "{:.3f}")]
    columns = [(name, fmt) for name, fmt in columns if any(name in row for row in rows)]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[n]) if n in row else "-" for n, fmt in columns) + " |")
    return "\n".join(lines)


def mean_rows(rows: list[dict], first: str) -> list[dict]:
    """The mean of each metric over the rows of each score kind."""
    kinds = list(dict.fromkeys(r["score"] for r in rows))
    means = []
    for kind in kinds:
        mine = [r for r in rows if r["score"] == kind]
        metrics = [k for k in mine[0] if k not in (first, "score")]
        means.append({first: "mean", "score": kind, **{k: float(np.mean([r[k] for r in mine])) for k in metrics}})
    return means


# --- files -------------------------------------------------------------------------------------

def image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def evenly_spaced(items: list, count: int) -> list:
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def link_training_folder(root: str, split_files: dict) -> str:
    """root/<split>/normal/<files as symlinks>: an image folder of exactly these files, for
    config.data.source='folder' (which reads every class under a split)."""
    for split, names in split_files.items():
        folder = os.path.join(root, split, "normal")
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(names):
            link = os.path.join(folder, f"{i:06d}{os.path.splitext(name)[1]}")
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(name), link)
    return root


def read_model_images(paths: list[str], size: int = 0) -> list[np.ndarray]:
    """Files -> float32 [-1, 1] images, resized to size x size when given."""
    from PIL import Image

    images = files.read_images(paths)
    if size:
        images = [np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR)) for x in images]
    return [files.to_model_range(x) for x in images]


def hold_out(names: list[str]) -> tuple[list[str], list[str]]:
    """(training files, --reference held-out files), the held-out ones evenly spaced."""
    reference = set(evenly_spaced(names, _REFERENCE.value))
    return [n for n in names if n not in reference], sorted(reference)


# --- (a) one-class CIFAR-10 --------------------------------------------------------------------

def cifar_class(root: str, name: str, classes: list[str]) -> list[dict]:
    train, reference = hold_out(image_files(os.path.join(root, "train", name)))
    workdir = os.path.join(_WORKDIR.value, "cifar", name)
    folder = link_training_folder(os.path.join(workdir, "data"),
                                  {"train": train, "test": image_files(os.path.join(root, "test", name))})
    tokenizer, prior = trained_models(workdir, dict(source="folder", path=folder, image_size=32, crop="center",
                                                    random_flip=True))
    test = [(path, c != name) for c in classes for path in image_files(os.path.join(root, "test", c))]
    test = evenly_spaced(test, _MAX_TEST.value)
    images = read_model_images([p for p, _ in test])
    train_mean = np.mean(read_model_images(evenly_spaced(train, 2000)), axis=0)
    scored = score(prior or tokenizer, images, read_model_images(reference), train_mean)
    return [{"class": name, **row} for row in evaluate(scored, np.array([a for _, a in test]))]


def run_cifar() -> list[dict]:
    root = _CIFAR.value
    classes = sorted(os.listdir(os.path.join(root, "test")))
    rows = []
    for name in _CLASSES.value or classes:
        if name not in classes:
            raise app.UsageError(f"--classes: {name!r} is not a class of {root}/test ({', '.join(classes)}).")
        start = time.perf_counter()
        rows += cifar_class(root, name, classes)
        print(f"{name}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return rows + (mean_rows(rows, "class") if len(_CLASSES.value or classes) > 1 else [])


# --- (b) synthetic defects ---------------------------------------------------------------------

DEFECTS = ("noise", "patch", "scratch")


def paste_defect(image: np.ndarray, donor: np.ndarray, kind: str, rng: np.random.Generator):
    """(defective copy, bool mask [H, W]) of a float image: a uniform-noise square, a square
    of another photograph, or a straight scratch 1-2 pixels wide of one random colour."""
    height, width = image.shape[:2]
    out, mask = image.copy(), np.zeros((height, width), bool)
    if kind in ("noise", "patch"):
        side = int(rng.integers(height // 6, height // 3 + 1))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        mask[top:top + side, left:left + side] = True
        if kind == "noise":
            out[mask] = rng.uniform(-1, 1, (side * side, image.shape[-1]))
        else:
            out[mask] = donor[:side, :side].reshape(-1, image.shape[-1])
        return out, mask
    length, angle = rng.uniform(0.4, 0.8) * min(height, width), rng.uniform(0, np.pi)
    centre = rng.uniform(0.3, 0.7, 2) * (height, width)
    t = np.linspace(-0.5, 0.5, 4 * int(length))[:, None]
    points = np.round(centre + t * length * np.array([np.sin(angle), np.cos(angle)])).astype(int)
    for thickness in range(int(rng.integers(1, 3))):
        rows, cols = np.clip(points[:, 0] + thickness, 0, height - 1), np.clip(points[:, 1], 0, width - 1)
        mask[rows, cols] = True
    out[mask] = rng.uniform(-1, 1, image.shape[-1])
    return out, mask


def run_synthetic() -> list[dict]:
    from vqjax.data import images as data_images

    if _PRIOR.value:
        prior = vqjax.prior.load(_PRIOR.value)
        tokenizer = prior.tokenizer
    elif _TOKENIZER.value:
        tokenizer, prior = vqjax.pretrained.load(_TOKENIZER.value), None
    else:
        tokenizer, prior = trained_models(os.path.join(_WORKDIR.value, "synthetic"),
                                          dict(source="embedded", image_size=32))
    size = int(tokenizer.config.data.image_size)
    crops = files.to_model_range(data_images.embedded_images("test", size)[0])
    count = _NUM_DEFECTS.value
    if 2 * count + _REFERENCE.value > len(crops):
        raise app.UsageError(f"--num_defects and --reference ask for more than the {len(crops)} test crops.")
    rng = np.random.default_rng(0)
    clean, donors, reference = crops[:count], crops[count:2 * count], list(crops[2 * count:2 * count + _REFERENCE.value])
    kinds = [DEFECTS[i % len(DEFECTS)] for i in range(count)]
    defective, masks = zip(*(paste_defect(x, d, k, rng) for x, d, k in zip(clean, donors, kinds)))
    train_mean = np.mean(files.to_model_range(data_images.embedded_images("train", size)[0][:2000]), axis=0)
    scored = score(prior or tokenizer, [*defective, *clean], reference, train_mean)
    no_defect = np.zeros((size, size), bool)
    rows = []
    for kind in (*DEFECTS, "all"):
        picked = [i for i in range(count) if kind in ("all", kinds[i])]
        rows_of = picked + [count + i for i in picked]  # these defective crops and their clean originals
        subset = Scored({k: np.asarray(v)[rows_of] for k, v in scored.images.items()},
                        {k: [v[i] for i in rows_of] for k, v in scored.maps.items()})
        subset_masks = [masks[i] for i in picked] + [no_defect] * len(picked)
        anomalous = np.r_[np.ones(len(picked)), np.zeros(len(picked))]
        rows += [{"defect": kind, **row} for row in evaluate(subset, anomalous, subset_masks)]
    return rows


# --- (c) MVTec AD ------------------------------------------------------------------------------

def mvtec_categories(root: str) -> list[str]:
    if os.path.isdir(os.path.join(root, "train", "good")):
        return [root]
    found = sorted(os.path.join(root, c) for c in os.listdir(root) if os.path.isdir(os.path.join(root, c, "train", "good")))
    if not found:
        raise app.UsageError(f"--mvtec={root} holds neither train/good nor categories with train/good.")
    return found


def mvtec_mask(category: str, defect: str, image_path: str, size: int) -> np.ndarray:
    """The ground-truth mask of a test image at size x size (all False for good images)."""
    from PIL import Image

    if defect == "good":
        return np.zeros((size, size), bool)
    name = os.path.splitext(os.path.basename(image_path))[0]
    path = os.path.join(category, "ground_truth", defect, f"{name}_mask.png")
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L").resize((size, size), Image.NEAREST)) > 127


def mvtec_category(category: str) -> list[dict]:
    size = _SIZE.value
    name = os.path.basename(os.path.normpath(category))
    train, reference = hold_out(image_files(os.path.join(category, "train", "good")))
    workdir = os.path.join(_WORKDIR.value, "mvtec", name)
    folder = link_training_folder(os.path.join(workdir, "data"), {"train": train, "test": reference})
    tokenizer, prior = trained_models(workdir, dict(source="folder", path=folder, image_size=size, crop="resize",
                                                    random_flip=False))
    test_root = os.path.join(category, "test")
    test = [(path, defect) for defect in sorted(os.listdir(test_root))
            for path in image_files(os.path.join(test_root, defect))]
    test = evenly_spaced(test, _MAX_TEST.value)
    images = read_model_images([p for p, _ in test], size)
    masks = [mvtec_mask(category, defect, path, size) for path, defect in test]
    train_mean = np.mean(read_model_images(evenly_spaced(train, 200), size), axis=0)
    scored = score(prior or tokenizer, images, read_model_images(reference, size), train_mean)
    anomalous = np.array([defect != "good" for _, defect in test])
    return [{"category": name, **row} for row in evaluate(scored, anomalous, masks)]


def run_mvtec() -> list[dict]:
    categories = mvtec_categories(_MVTEC.value)
    rows = [row for category in categories for row in mvtec_category(category)]
    return rows + (mean_rows(rows, "category") if len(categories) > 1 else [])


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # Orbax logs every save at INFO and every read-only open at WARNING
    report = {}
    setting = (f"tokenizer {_TOKENIZER_CONFIG.value}, {_STEPS.value} steps at batch {_BATCH.value}"
               + (f"; {_PRIOR_KIND.value} prior, {_PRIOR_STEPS.value} steps" if _PRIOR_STEPS.value > 0 else "")
               + f"; combined against {_REFERENCE.value} held-out normal images")
    if _CIFAR.value:
        report["cifar"] = run_cifar()
        print(f"\nOne-class CIFAR-10 ({setting}):\n{format_table(report['cifar'], 'class')}")
    if _SYNTHETIC.value:
        report["synthetic"] = run_synthetic()
        models = _PRIOR.value or _TOKENIZER.value or setting
        print(f"\nSynthetic defects in {_NUM_DEFECTS.value} embedded test crops, beside their clean originals "
              f"({models}):\n{format_table(report['synthetic'], 'defect')}")
    if _MVTEC.value:
        report["mvtec"] = run_mvtec()
        print(f"\nMVTec AD at {_SIZE.value}x{_SIZE.value} ({setting}):\n{format_table(report['mvtec'], 'category')}")
    if not report:
        raise app.UsageError("Pass --cifar=FOLDER, --synthetic and/or --mvtec=FOLDER.")
    if _JSON.value:
        write_json(_JSON.value, report)


if __name__ == "__main__":
    app.run(main)
