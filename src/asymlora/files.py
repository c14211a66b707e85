"""Reading the files users write and writing the files we leave behind, in one place.

Why one place: every user-written file (adapter configs, prompt templates, comparison and federated
YAMLs, recorded analysis JSON) must fail the same way when it is missing or malformed, naming the
file and the line; and every file we write must appear whole or not at all (a run killed mid-write
must not leave a truncated JSON that the next run trusts).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Optional, Union

__all__ = ["read_settings", "atomic_path", "write_json_atomic", "write_text_atomic", "to_jsonable",
           "check_writable_dir"]

PathLike = Union[str, "os.PathLike[str]"]


def _yaml_error(exc: Exception) -> str:
    """'at line L, column C: problem (while ... at line K)' from PyYAML's marks, in one line."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None or mark is None:
        return "(" + " ".join(str(exc).split()) + ")"
    text = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None:
        text += f" ({context} at line {cmark.line + 1})"
    return text


def read_settings(path: PathLike, what: str = "config file", error: type[Exception] = ValueError,
                  fmt: Optional[Literal["json", "yaml"]] = None) -> Any:
    """The parsed content of a JSON or YAML settings file.

    `fmt` None: JSON for a `.json` name, YAML for anything else (YAML reads most JSON too). Pass
    "json" where the file is JSON by convention (YAML would read `1e-05` as a string). A missing file
    is a FileNotFoundError naming `what`; empty or malformed content is `error` naming the file and,
    where the parser knows it, the line.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}): not a {what}") from None
    if not text.strip():
        raise error(f"{path}: the file is empty")
    fmt = fmt or ("json" if path.suffix.lower() == ".json" else "yaml")
    if fmt == "yaml":
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader())
        except yaml.YAMLError as exc:
            raise error(f"{path}: malformed YAML {_yaml_error(exc)}") from None
    else:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
        except _DuplicateKey as exc:
            raise error(f"{path}: key {exc.args[0]!r} appears twice in one mapping") from None
    if data is None:
        raise error(f"{path}: holds no settings (only null or comments)")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _unique_key_loader() -> Any:
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML says keys are unique;
    PyYAML keeps the last silently, so a setting written twice would be half-ignored)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base": overriding merged keys is what merging is for
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"key {key!r} appears twice (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        loader.flatten_mapping(node)
        return dict(loader.construct_pairs(node, deep=deep))

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """Fallback for json.dump: sets (sorted), tuples, enums (PeftType) and paths become plain values."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "value"):
        return value.value
    return str(value)


def write_json_atomic(path: PathLike, data: Any, default: Callable[[Any], Any] = to_jsonable,
                      **dump_kwargs: Any) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, default=default, **dump_kwargs) + "\n")


def check_writable_dir(path: PathLike, what: str = "output folder") -> Path:
    """`path` if it is (or can be made) a writable folder, checked before any work and without
    creating anything; else a one-line error naming `what` and the path."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{what}: {probe} is a file, not a folder (for {path})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: cannot write to {probe} (permission denied)")
    return path
