"""The persistent result cache: traced steps and real CPU steps stored as JSON, keyed by everything that
decides them, so a re-run on unchanged recipes skips the seconds each one costs (as ruff's and mypy's caches).

Where: --recipes-cache-dir / --cache-dir, else RECIPE_CHECKS_CACHE_DIR, else the ini's recipe_checks_cache_dir,
else the platform's user cache directory; off with --recipes-no-cache / --no-cache / RECIPE_CHECKS_NO_CACHE=1.
An entry is used only when it parses as exactly what its kind writes, under the key asked for; anything else
(corrupt, truncated, hostile, another schema) is a miss. The key, the bound and concurrency: docs/cache.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import functools
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath
from typing import Any

SCHEMA = 1  # bumped when an entry's layout changes: entries of another schema live in another folder
NO_CACHE_ENV = "RECIPE_CHECKS_NO_CACHE"
CACHE_DIR_ENV = "RECIPE_CHECKS_CACHE_DIR"
# The bound: the least recently used entries go first once either is passed. A traced step's entry is
# 1-4 KiB and a real step's under 2 KiB, so the count binds first: thousands of recipes x GPUs x fixes.
MAX_ENTRIES = 4096
MAX_BYTES = 64 * 1024 * 1024
MAX_ENTRY_BYTES = 4 * 1024 * 1024  # a larger file is no entry this cache wrote: not read
_STALE_TEMP_S = 3600.0  # a temporary file this old was left by a killed writer
# The libraries whose code runs in a traced or real step: a new version may change any result.
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "diffusers",
             "huggingface_hub", "pydantic")
# The CPU features that choose the kernels a real CPU step runs (bitsandbytes' 4-bit layout on AVX512-BF16,
# oneDNN's bf16 and AMX paths); a traced step runs on fake tensors and never reads them.
_KERNEL_FLAGS = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16", "i8mm",
})
_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_TRUE = frozenset({"1", "true", "yes", "on"})


class NotAnEntry(ValueError):
    """A stored value that is not exactly what its kind writes: the entry is a miss."""


# --- where ---------------------------------------------------------------------------------------

def cache_directory(option: str | os.PathLike | None = None, *, no_cache: bool = False,
                    ini: str | os.PathLike | None = None, environ: typing.Mapping[str, str] | None = None) -> str | None:
    """The directory of the result cache, or None when it is off: the command line (`no_cache`, `option`)
    before the environment (RECIPE_CHECKS_NO_CACHE, RECIPE_CHECKS_CACHE_DIR) before the ini file before
    the platform's user cache directory. The plugin and the command line both ask here."""
    env = os.environ if environ is None else environ
    if no_cache:
        return None
    if option:
        return os.fspath(option)
    if env.get(NO_CACHE_ENV, "").strip().lower() in _TRUE:
        return None
    if env.get(CACHE_DIR_ENV):
        return env[CACHE_DIR_ENV]
    if ini:
        return os.fspath(ini)
    return default_directory(env)


def default_directory(environ: typing.Mapping[str, str] | None = None) -> str:
    """The platform's user cache directory for recipe-checks (what platformdirs' user_cache_dir gives)."""
    env = os.environ if environ is None else environ
    if sys.platform == "win32":
        base = env.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return os.path.join(base, "recipe-checks", "Cache")
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Caches", "recipe-checks")
    base = env.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "recipe-checks")


# --- what decides every entry -----------------------------------------------------------------------

@functools.cache
def engine_hash() -> str:
    """The hash of recipe-checks' own source and data files (source_hash of the installed package)."""
    return source_hash(Path(__file__).resolve().parent)


def source_hash(root: Path) -> str:
    """A hash of the .py, .yaml and .json files under `root`, names included: the code and the numbers
    (overheads, bundled configs, GPU profiles) that compute every result. The whole package, not each entry's
    modules: a rule or a trace reaches most of it through imports, and a list of what each one reads would be
    one more thing to keep true; any change of recipe-checks itself starts a cold cache."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml", ".json") and p.is_file()
                       and "__pycache__" not in p.relative_to(root).parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def library_versions() -> dict[str, str]:
    """recipe-checks' and each library's installed version (a local build tag such as +cpu included)."""
    return {name: _version(name) for name in ("recipe-checks", *LIBRARIES)}


@functools.cache
def cpu_features() -> str:
    """The machine and the CPU features that choose a real CPU step's kernels: part of a real step's key."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.partition(":")[2].split())
                break
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "")  # torch's kernel choice, when forced
    return " ".join([platform.machine() or platform.processor(), *sorted(flags & _KERNEL_FLAGS),
                     *([f"ATEN_CPU_CAPABILITY={capability}"] if capability else [])])


_COMPUTED_ONCE = (engine_hash, library_versions, cpu_features)


def environment() -> dict:
    """What decides every entry besides its own inputs: the engine's source, the versions, Python's."""
    return {"engine": engine_hash(), "versions": library_versions(), "python": "{}.{}".format(*sys.version_info[:2])}


def _canonical(value: Any) -> Any:
    """json.dumps' fallback for a key's parts: dataclasses and enums by type and value, sets sorted."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__qualname__,
                **{f.name: getattr(value, f.name) for f in dataclasses.fields(value)}}
    if isinstance(value, enum.Enum):
        return {"__type__": type(value).__qualname__, "value": value.value}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: json.dumps(v, sort_keys=True, default=_canonical))
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is no part of a cache key")


def key_text(kind: str, parts: dict, env: dict) -> str | None:
    """The canonical text a key hashes; None when a part has no canonical form (then nothing is cached)."""
    try:
        return json.dumps({"schema": SCHEMA, "kind": kind, "environment": env, "parts": parts},
                          sort_keys=True, separators=(",", ":"), default=_canonical)
    except (TypeError, ValueError, RecursionError):
        return None


# --- the store -------------------------------------------------------------------------------------

class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS: Any = _Miss()


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0

    def since(self, earlier: CacheStats) -> CacheStats:
        return CacheStats(self.hits - earlier.hits, self.misses - earlier.misses, self.writes - earlier.writes)


@dataclasses.dataclass
class RunTally:
    """One run's hits, misses and writes: its cache's counts since the run began (a cache object outlives a
    pytester run in the same process), plus those pytest-xdist workers report to their controller."""

    directory: str | None
    start: CacheStats = dataclasses.field(default_factory=CacheStats)
    workers: CacheStats = dataclasses.field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        store = store_for(self.directory)
        self.start = dataclasses.replace(store.stats) if store is not None else CacheStats()

    def counts(self) -> list[int]:
        """[hits, misses, writes] of the run, the workers' included: plain data, for a worker to send."""
        store = store_for(self.directory)
        own = store.stats.since(self.start) if store is not None else CacheStats()
        return [own.hits + self.workers.hits, own.misses + self.workers.misses, own.writes + self.workers.writes]

    def add_worker(self, counts: list[int]) -> None:
        hits, misses, writes = counts
        self.workers = CacheStats(self.workers.hits + hits, self.workers.misses + misses, self.workers.writes + writes)


class ResultCache:
    """One cache directory: entries `v<SCHEMA>/<kind>-<sha256>.json`, written atomically (a temporary file in
    the same folder, then os.replace), so a reader sees a whole entry or none; bounded, least recently used first."""

    def __init__(self, directory: str | os.PathLike, *, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES) -> None:
        self.root = Path(directory).expanduser().absolute()
        self.folder = self.root / f"v{SCHEMA}"
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.stats = CacheStats()
        self._environment: dict | None = None

    def __repr__(self) -> str:
        return f"ResultCache({str(self.root)!r})"

    def key(self, kind: str, parts: dict) -> str | None:
        if self._environment is None:  # computed at the first lookup: configuring a run costs nothing
            self._environment = environment()
        text = key_text(kind, parts, self._environment)
        return hashlib.sha256(text.encode()).hexdigest() if text is not None else None

    def path(self, kind: str, key: str) -> Path:
        if not _KIND.fullmatch(kind):
            raise ValueError(f"cache kind {kind!r}: lowercase letters, digits and '-'")
        return self.folder / f"{kind}-{key}.json"

    def get(self, kind: str, key: str, decode: Callable[[Any], Any]) -> Any:
        """The decoded value of the entry, or MISS: absent, unreadable, or not exactly what `kind` writes."""
        from recipe_checks.limits import read_bounded

        path = self.path(kind, key)
        try:
            envelope = json.loads(read_bounded(path, MAX_ENTRY_BYTES, "cache entry"))
            if (not isinstance(envelope, dict) or set(envelope) != {"schema", "kind", "key", "value"}
                    or envelope["schema"] != SCHEMA or envelope["kind"] != kind or envelope["key"] != key):
                raise NotAnEntry("not an entry of this kind and key")
            value = decode(envelope["value"])
        except Exception:  # noqa: BLE001  absent, unreadable, corrupt, truncated or hostile: a miss, never a crash
            self.stats.misses += 1
            return MISS
        self.stats.hits += 1
        with contextlib.suppress(OSError):  # recently used: evicted last (a read-only cache still reads)
            os.utime(path)
        return value

    def put(self, kind: str, key: str, value: Any) -> bool:
        """Store a JSON value; False when it could not be written (the run goes on without it)."""
        data = json.dumps({"schema": SCHEMA, "kind": kind, "key": key, "value": value},
                          sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_ENTRY_BYTES:
            return False
        try:
            self._make_folder()
            fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(temporary, self.path(kind, key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError:
            return False
        self.stats.writes += 1
        self.prune(keep=self.path(kind, key))
        return True

    def _make_folder(self) -> None:
        if self.folder.is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # private to its user, where it is created
        self.folder.mkdir(exist_ok=True, mode=0o700)
        # CACHEDIR.TAG keeps backup tools out (bford.info/cachedir); the .gitignore keeps a cache inside a
        # repository out of commits
        tag = "Signature: 8a477f597d28d172789f06886806bc55\n# a cache directory of recipe-checks (docs/cache.md)\n"
        for name, text in (("CACHEDIR.TAG", tag), (".gitignore", "# written by recipe-checks: its result cache\n*\n")):
            with contextlib.suppress(OSError), open(self.root / name, "x", encoding="utf-8") as out:
                out.write(text)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, path) of each entry; temporary files a killed writer left are removed."""
        found = []
        now = time.time()
        try:
            scan = list(os.scandir(self.folder))
        except OSError:
            return []
        for entry in scan:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # removed by another process meanwhile
                continue
            if entry.name.startswith(".tmp-"):
                if now - info.st_mtime > _STALE_TEMP_S:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if entry.name.endswith(".json"):
                found.append((info.st_mtime, info.st_size, Path(entry.path)))
        return found

    def prune(self, keep: Path | None = None) -> None:
        """Remove the least recently used entries while over either bound, down to 90% of it (so that a
        full cache is not scanned again at every write); never `keep`, the entry just written (file times
        tick in milliseconds: it may tie with older ones)."""
        found = [entry for entry in self.entries() if entry[2] != keep]
        count = len(found) + (keep is not None)
        total = sum(size for _, size, _ in found) + (_size(keep) if keep is not None else 0)
        if count <= self.max_entries and total <= self.max_bytes:
            return
        for _, size, path in sorted(found, key=lambda e: e[0]):
            if count <= 0.9 * self.max_entries and total <= 0.9 * self.max_bytes:
                break
            with contextlib.suppress(OSError):  # another process may have removed it first
                path.unlink()
            count -= 1
            total -= size


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_STORES: dict[str, ResultCache] = {}
_ACTIVE: contextvars.ContextVar[ResultCache | None] = contextvars.ContextVar("recipe_checks_result_cache")


def store_for(directory: str | os.PathLike | None) -> ResultCache | None:
    """The cache of a directory (one object per directory in a process); None for None: no cache."""
    if directory is None:
        return None
    where = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    store = _STORES.get(where)
    if store is None:
        store = _STORES[where] = ResultCache(where)
    return store


def forget() -> None:
    """Drop the cache objects and what they computed once (tests that change a version or the engine hash)."""
    _STORES.clear()
    for function in _COMPUTED_ONCE:
        function.cache_clear()


@contextlib.contextmanager
def using(directory: str | os.PathLike | None) -> Iterator[ResultCache | None]:
    """Make the cache of `directory` (None: none) the one traces use in this context: the engine sets it
    from a run's options around the rules, where the trace has no options to read."""
    token = _ACTIVE.set(store_for(directory))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def current() -> ResultCache | None:
    """The cache `using` set, else the environment's (RECIPE_CHECKS_NO_CACHE, RECIPE_CHECKS_CACHE_DIR, the default)."""
    try:
        return _ACTIVE.get()
    except LookupError:
        return store_for(cache_directory())


def cached(kind: str, parts: dict, compute: Callable[[], Any], *, encode: Callable[[Any], Any],
           decode: Callable[[Any], Any], store: ResultCache | None | _Miss = MISS) -> Any:
    """`compute()`, or the value a cache entry under (kind, parts) holds. `encode` gives the JSON value to store
    (None: this value is not stored); `decode` rebuilds the value from it and raises on anything else. A value
    whose stored form does not decode back to the same form is not stored: a verdict never changes by a cache."""
    store = current() if store is MISS else store
    key = store.key(kind, parts) if store is not None else None
    if key is None:
        return compute()
    found = store.get(kind, key, decode)
    if found is not MISS:
        return found
    value = compute()
    encoded = faithful(value, encode, decode)
    if encoded is not None:
        store.put(kind, key, encoded)
    return value


def faithful(value: Any, encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Any:
    """The stored form of `value` when decoding it gives back the same form; None when not (or not storable)."""
    try:
        encoded = encode(value)
        if encoded is None:
            return None
        text = json.dumps(encoded, sort_keys=True)
        return encoded if json.dumps(encode(decode(json.loads(text))), sort_keys=True) == text else None
    except Exception:  # noqa: BLE001  a value the cache cannot hold is computed again next time, not lost now
        return None


# --- dataclasses as JSON -------------------------------------------------------------------------------

def to_json(value: Any) -> Any:
    """A dataclass of plain values (str, int, float, bool, None, lists, tuples, dicts, paths) as a JSON value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a dict with keys other than strings")
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} is not stored in the result cache")


def from_json(cls: type, data: Any) -> Any:
    """The dataclass `cls` from `to_json`'s form, each field checked against its annotation: a missing or
    extra field, or a value of another type, raises NotAnEntry (the entry is a miss)."""
    if not isinstance(data, dict):
        raise NotAnEntry(f"{cls.__name__}: not an object")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if set(data) != set(names):
        raise NotAnEntry(f"{cls.__name__}: fields {sorted(data)}, expected {sorted(names)}")
    return cls(**{name: _checked(data[name], hints[name], f"{cls.__name__}.{name}") for name in names})


_type_hints = functools.cache(typing.get_type_hints)


def _checked(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _checked(value, option, where)
            except NotAnEntry:
                continue
        raise NotAnEntry(f"{where}: {type(value).__name__} is none of {hint}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict:  # a nested object its own class checks
        if isinstance(value, dict):
            return value
    elif hint in (Path, PurePath):
        if isinstance(value, str):
            return Path(value)
    elif origin in (list, tuple) and isinstance(value, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise NotAnEntry(f"{where}: a fixed-length tuple is not stored")
        items = [_checked(v, args[0], where) for v in value] if args else None
        if items is None:
            raise NotAnEntry(f"{where}: a list of unstated type is not stored")
        return items if origin is list else tuple(items)
    elif origin is dict and isinstance(value, dict) and args and args[0] is str:
        return {k: _checked(v, args[1], where) for k, v in value.items()}
    elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value)
    raise NotAnEntry(f"{where}: {type(value).__name__} is not {hint}")
