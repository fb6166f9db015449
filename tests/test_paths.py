"""vqjax.core.paths, and the rule that every file access of the library goes through it."""

import ast
import os
import pathlib

import pytest

from vqjax.core import paths

REPO = pathlib.Path(__file__).resolve().parent.parent
# Calls that reach only the local disk: a gs:// path given to them becomes a local folder
# named "gs:", or an error.
LOCAL_ONLY = {"open", "os.makedirs", "os.mkdir", "os.listdir", "os.walk", "os.scandir", "os.remove",
              "os.unlink", "os.replace", "os.rename", "os.stat", "glob.glob", "tf.io.read_file",
              "np.load", "np.save", "np.savez", "np.fromfile"}
LOCAL_ONLY_PREFIXES = ("os.path.", "shutil.", "tf.io.gfile.", "pathlib.")
# The path layer itself, and what may use the local disk on purpose.
ALLOWED = {
    "vqjax/core/paths.py": None,  # it is the layer
    "vqjax/data/images.py": {"tf.io.read_file"},  # TensorFlow reads local image files itself
    "vqjax/data/codes.py": {"np.savez", "np.load"},  # into and out of a path-layer stream
    "vqjax/apps/tokens.py": {"np.load"},  # out of a path-layer stream
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _local_file_calls(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in LOCAL_ONLY or name.startswith(LOCAL_ONLY_PREFIXES):
                found.append((node.lineno, name))
    return sorted(found)


def test_the_library_reaches_files_only_through_the_path_layer():
    offenders = []
    for root in ("vqjax", "experiments"):
        for path in sorted((REPO / root).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            allowed = ALLOWED.get(relative, set())
            if allowed is None:
                continue
            offenders += [f"{relative}:{line} {name}" for line, name in _local_file_calls(path.read_text())
                          if name not in allowed]
    assert not offenders, "file access outside vqjax.core.paths:\n" + "\n".join(offenders)


def test_the_lint_sees_what_it_forbids():
    code = "import os\nos.makedirs(d)\nwith open(p) as f: pass\nos.path.join(a, b)\nshutil.rmtree(d)\nx.open()\n"
    assert [name for _, name in _local_file_calls(code)] == ["os.makedirs", "open", "os.path.join", "shutil.rmtree"]


def test_resolve_expands_local_paths_and_keeps_uris(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.resolve("~/run")) == str(tmp_path / "run")
    assert os.fspath(paths.resolve("run")) == str(tmp_path / "run")
    assert os.fspath(paths.resolve("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(paths.join("gs://bucket/run", "checkpoints")) == "gs://bucket/run/checkpoints"
    assert paths.is_uri("gs://bucket/x") and not paths.is_uri(str(tmp_path))


def test_writes_are_whole_or_absent(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    paths.write_json(target, {"b": 1, "a": [1.5]})
    assert paths.read_json(target) == {"a": [1.5], "b": 1}
    with pytest.raises(RuntimeError):
        with paths.atomic_writer(target) as f:
            f.write(b"half a fi")
            raise RuntimeError("killed")
    assert paths.read_json(target) == {"a": [1.5], "b": 1}  # the old file, untouched
    assert sorted(os.listdir(target.parent)) == ["metrics.json"]  # no temporary left behind


def test_list_files_is_recursive_and_sorted(tmp_path):
    for name in ("b/2.png", "a/z/1.png", "a/0.png", "c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(os.fspath(p), tmp_path) for p in paths.list_files(tmp_path)]
    assert found == ["a/0.png", "a/z/1.png", "b/2.png", "c.txt"]
