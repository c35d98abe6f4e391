"""Limits on what recipe-checks reads: every bound on hostile or malformed input, with its reason,
and the bounded file read that enforces the size limits.

Each limit is far above what a real recipe or config.json needs and low enough that checking one
file stays within seconds and a few hundred MiB; going past one is a finding, never a hang.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat

# --- recipe files -------------------------------------------------------------------------------
# The shipped recipes are 1-2 KiB; a 1 MiB recipe is not hand-written, and YAML parsing in pure
# Python costs about 1 s and 30 MiB per MiB.
MAX_RECIPE_BYTES = 1024 * 1024
# Recipes nest 3-4 levels (section, key, a mapping such as gradient_checkpointing_kwargs); the
# YAML composer recurses per level, so 10,000 levels reached Python's recursion limit.
MAX_YAML_DEPTH = 32
# Nodes after expanding every alias and merge key: two anchors referencing each other ten times
# ("billion laughs") expand a 1 KiB file to 10^9 nodes. A real recipe has under 200.
MAX_YAML_NODES = 100_000
# A recipe key is a keyword argument name; longer ones are echoed in every finding about them.
MAX_KEY_CHARS = 256
# Ids, paths, module names and regexes are short; a 1 MiB string makes did-you-mean and regex
# matching slow and findings unreadable.
MAX_STRING_CHARS = 4096
# Free text that tools pass to the tokenizer or the model and no check reads: a chat template (current models'
# run to 10-20 KiB; alignment-handbook's SmolLM3 SFT config holds one of 4,558 characters) or a system prompt.
# Such a value may be this long; a longer one is cut to it, not refused, since nothing reads it. The file
# limit bounds them all together.
MAX_TEXT_CHARS = 64 * 1024
FREE_TEXT_KEYS = frozenset({
    "chat_template", "chat_template_jinja", "system_prompt", "default_system", "default_system_message",
    "system_message",
})

# --- values -------------------------------------------------------------------------------------
# Lists of names or indexes (target_modules, layers_to_transform, modules_to_save, ...): 80 layers
# x 7 projections written out by full name is 560; every entry is matched against every module.
MAX_LIST_ITEMS = 1024
# Integers reach torch, numpy and C code (numpy's seed takes at most 2**32 - 1).
MAX_INT = 2**63 - 1
MAX_SEED = 2**32 - 1
# Counts of steps, epochs and warmup steps: 10^12 is beyond any run; larger values only overflow.
MAX_STEPS = 10**12
# Per-device batch size and gradient accumulation: a trace allocates (fake) tensors of
# batch x sequence x hidden elements, which must stay far inside int64.
MAX_BATCH_SIZE = 65_536
# GPUs in one distributed run (distributed.world_size): past the largest published training runs
MAX_WORLD_SIZE = 131_072
MAX_ACCUMULATION_STEPS = 1_000_000
# Tokens per micro-batch (batch x max_seq_length) that a training step is traced for: 2^27
# (134M) is 100x the largest single-GPU micro-batch in the published measurements.
MAX_TRACE_TOKENS = 2**27
# LoRA alpha and other scale factors: alpha / r multiplies the adapter output.
MAX_SCALE = 1e6
# A throughput claim: the fastest published single-GPU fine-tuning runs are near 10^5 tokens/s.
MAX_TOKENS_PER_SECOND = 1e9

# --- regular expressions (peft treats a string target_modules, rank_pattern keys, ...) ---------
# peft matches each pattern against every module name (about 50 characters), with backtracking.
MAX_PATTERN_CHARS = 512
# Each unbounded repeat (`.*`, `\d+`) multiplies the worst-case backtracking by the name's length:
# four reach 6 ms per module name of 64 characters, seven 6 s (measured, Python 3.11).
MAX_UNBOUNDED_REPEATS = 3
# Bounded repeats nested in each other multiply: (a{1,40}){1,40} tries 1,600 splits per position.
MAX_NESTED_REPEAT_PRODUCT = 1000

# --- model configs ------------------------------------------------------------------------------
# A config.json is 1-10 KiB (the largest bundled one is under 4 KiB; id2label tables add some).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# JSON nesting: configs nest 2-3 levels (text_config, rope_scaling); json recurses per level.
MAX_CONFIG_DEPTH = 16
# Sizes transformers builds the model from, checked before it builds anything: the meta-device
# build costs time per layer and expert, and the trace's byte counts must stay in int64. Each is
# several times the largest released model (Llama 3.1 405B: 126 layers, hidden 16384, FFN 53248;
# Gemma 3: vocabulary 262,144; 384 experts in the largest MoE models).
MAX_CONFIG_LAYERS = 1024
MAX_CONFIG_HIDDEN = 131_072
MAX_CONFIG_INTERMEDIATE = 1_048_576
MAX_CONFIG_VOCAB = 4_194_304
MAX_CONFIG_HEADS = 4096
MAX_CONFIG_EXPERTS = 4096
MAX_CONFIG_POSITIONS = 2**27

# --- messages -----------------------------------------------------------------------------------
# A quoted value in a finding is cut to this many characters, so a 1 MiB key is not echoed whole.
MAX_QUOTED_CHARS = 80
# A library's error message quoted in a finding: long enough for the sentence that says what is wrong.
MAX_ERROR_CHARS = 200


def shorten(text: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """`text` as a string of at most `limit` characters, saying how long it really was; a NUL byte
    is shown as \\0, never written to a terminal or a log."""
    text = str(text).replace("\x00", "\\0")
    if len(text) <= limit:
        return text
    return f"{text[:limit - 1]}…({len(text):,} characters)"


class InputRefused(Exception):
    """A file that is not read, or not decoded: what is wrong (`line` where known) and the fix."""

    def __init__(self, message: str, help: str, line: int = 0) -> None:
        super().__init__(message)
        self.help = help
        self.line = line


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
)


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Anything else (a FIFO, a device such
    as /dev/zero, a directory, a symlink loop, a larger file) is refused before it is read, so a
    read never blocks and never takes more than `limit` + 1 bytes."""
    shown = shorten(os.fspath(path))
    try:
        before = os.stat(path)
        _refuse_unless_regular(before, shown, what, limit)
        # O_NONBLOCK: should the path turn into a FIFO between stat and open, open still returns
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except ValueError:  # os functions refuse a NUL byte in a path with ValueError
        raise InputRefused(f"{what} path '{shown}' contains a NUL byte", "remove the NUL byte from the path") from None
    except OSError as exc:
        raise _os_refusal(exc, shown, what) from None
    try:
        _refuse_unless_regular(os.fstat(fd), shown, what, limit)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _os_refusal(exc, shown, what) from None
    finally:
        os.close(fd)
    if size > limit:  # it grew after the stat
        raise _too_large(shown, what, size, limit)
    return b"".join(chunks)


def decode_text(raw: bytes, what: str) -> str:
    """Text from bytes: UTF-32, UTF-8 (with or without a BOM) or UTF-16, told apart by the BOM;
    undecodable bytes and NUL bytes (binary files, UTF-16 without a BOM) are refused with their line."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: FF FE starts both
        encoding = "utf-32"
    elif raw.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1 if encoding.startswith("utf-8") else 0
        raise InputRefused(
            f"the {what} cannot be read: it is not {encoding.upper().replace('-SIG', '')} text: byte 0x{raw[exc.start]:02x} "
            f"at offset {exc.start:,} cannot be decoded",
            "save the file as UTF-8 text (a binary file, or one in another encoding such as Latin-1, cannot be read)",
            line,
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise InputRefused(
            f"the {what} cannot be read: it holds a NUL byte at line {text.count(chr(10), 0, nul) + 1}: it is a binary file, "
            "or UTF-16 text without a byte-order mark",
            "save the file as UTF-8 text",
            text.count("\n", 0, nul) + 1,
        )
    return text


def _refuse_unless_regular(st: os.stat_result, shown: str, what: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise InputRefused(
            f"{what} '{shown}' is {kind}, not a regular file; it is not read",
            f"point at a regular {what} file",
        )
    if st.st_size > limit:
        raise _too_large(shown, what, st.st_size, limit)


def _too_large(shown: str, what: str, size: int, limit: int) -> InputRefused:
    return InputRefused(
        f"{what} '{shown}' is {size:,} bytes, more than the {limit:,} a {what} may have; it is not read",
        f"a real {what} is a few KiB: check that this is the file you meant",
    )


def _os_refusal(exc: OSError, shown: str, what: str) -> InputRefused:
    if exc.errno == errno.ELOOP:
        return InputRefused(f"{what} path '{shown}' is a symbolic link loop", "point the link at a real file")
    if exc.errno == errno.ENOENT:
        return InputRefused(f"{what} '{shown}' does not exist", f"check the path of the {what}")
    if exc.errno == errno.ENAMETOOLONG:
        return InputRefused(f"{what} path '{shown}' is too long for the file system", "use a shorter path")
    return InputRefused(f"cannot read {what} '{shown}': {exc.strerror or exc}", f"make the {what} a readable file")
