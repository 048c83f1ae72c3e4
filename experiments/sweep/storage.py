"""Where a sweep's state lives (`ssdlab sweep --storage`): a local or shared folder, or any URI Ray Tune
accepts through pyarrow (s3://bucket/path, gs://..., file:///shared/path, ...).

    sweep_storage(storage, name)  -> "<storage>/<name>" (a resolved local path, or a URI)
    local_path(uri)               -> Path for a plain path, None for a URI
    read_text / write_text / exists / move / join   the few file operations the driver needs

Only the driver reads and writes here directly (the snapshot, --restart's move); Ray Tune writes the
experiment state and every trial's checkpoints, and a worker reads its trial's checkpoints back through
the filesystem Tune hands it. Nothing here assumes that the nodes share a disk.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Optional

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DEFAULT_STORAGE = "runs/ray"  # where sweeps keep their state unless --storage says otherwise


def is_uri(storage: str) -> bool:
    return bool(_SCHEME.match(str(storage)))


def sweep_storage(storage, name: str, default: str = DEFAULT_STORAGE) -> str:
    """The sweep's state location: `<storage>/<name>`, a local path resolved against the working
    directory, or a URI kept as written."""
    storage = str(storage or default)
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def local_path(uri: str) -> Optional[Path]:
    """The folder of a plain path; None for a URI (even file://: treated like remote storage)."""
    return None if is_uri(uri) else Path(uri)


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of `uri`."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return pafs.FileSystem.from_uri(uri)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if is_uri(uri) else str(Path(uri, *parts))


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    """Write `text` to `uri` atomically: a temporary file beside it, then a move (a full disk or a kill leaves
    the old file whole, never half of the new one)."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp")
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        fs.move(tmp, path)
    except OSError as exc:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        from ssd_core.errors import disk_full
        raise disk_full(path if not is_uri(uri) else uri, exc) or exc  # noqa: B904 (the OSError itself, or what it means)


def move(src: str, dst: str) -> None:
    fs, a = filesystem(src)
    _, b = filesystem(dst)
    fs.move(a, b)
