"""The one path layer: every file vqjax reads or writes goes through here.

Paths are `etils.epath.Path`s, the layer Orbax itself uses, so a workdir, a model directory, an
image folder or a weights file may be local or in a bucket (`gs://`, `s3://`): epath reaches
buckets through TensorFlow's filesystems when TensorFlow is installed, through fsspec (gcsfs,
s3fs) otherwise. Writes are whole or absent: a local file is written beside its destination and
renamed; an object in a bucket is uploaded from memory once its bytes are complete (an object
store shows an object only when its upload finishes), so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_uri(path: PathLike) -> bool:
    """Whether `path` names an object store (`gs://bucket/...`) rather than a local file."""
    return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
    """A user's path as an `epath.Path`: local ones with `~` expanded and made absolute (Orbax
    wants absolute paths, and a relative one would change meaning with the working directory),
    bucket URIs as given."""
    path = os.fspath(path)
    if is_uri(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.path.expanduser(path)))


def join(path: PathLike, *parts: str) -> epath.Path:
    return resolve(path).joinpath(*parts)


def exists(path: PathLike) -> bool:
    return resolve(path).exists()


def is_file(path: PathLike) -> bool:
    return resolve(path).is_file()


def is_dir(path: PathLike) -> bool:
    return resolve(path).is_dir()


def makedirs(path: PathLike) -> epath.Path:
    path = resolve(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_bytes(path: PathLike) -> bytes:
    return resolve(path).read_bytes()


def read_text(path: PathLike) -> str:
    return resolve(path).read_text()


def read_json(path: PathLike) -> Any:
    return json.loads(read_text(path))


@contextlib.contextmanager
def atomic_writer(path: PathLike) -> Iterator[io.IOBase]:
    """A binary file object whose bytes reach `path` only if the block ends without an error."""
    path = resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(path):
        # An upload closed by an exception would still publish a truncated object.
        buffer = io.BytesIO()
        yield buffer
        path.write_bytes(buffer.getvalue())
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True).encode()


def write_json(path: PathLike, payload: Any) -> None:
    write_bytes(path, json_bytes(payload))


def create_exclusive(path: PathLike, data: bytes) -> bool:
    """Writes `data` to `path` only if nothing is there; whether it did. Atomic on a local disk
    (O_EXCL); in a bucket a check then a write, so two processes starting within the same
    second could both succeed."""
    path = resolve(path)
    if is_uri(path):
        if path.exists():
            return False
        path.write_bytes(data)
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    return True


def remove_tree(path: PathLike) -> None:
    path = resolve(path)
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


def list_files(root: PathLike) -> list[epath.Path]:
    """Every file under `root`, recursively, in sorted order (one listing per folder)."""
    root = resolve(root)
    found, top = [], None
    for dirpath, _, filenames in root.walk():
        # epath's fsspec route yields bucket folders without their scheme ('bucket/dir'): the
        # walk's folders are rebuilt from `root` and their place below the first one.
        top = os.fspath(dirpath) if top is None else top
        folder = root.joinpath(os.path.relpath(os.fspath(dirpath), top))
        found.extend(folder / name for name in filenames)
    return sorted(found, key=os.fspath)
