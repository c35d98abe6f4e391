"""Target GPU profiles: a data file shipped with the package, validated into GpuProfile on load.

Checks always run against the profile of the GPU a recipe targets, never against the local machine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recipe_checks.gpus.names import boundary_prefixes, related_suggestions
from recipe_checks.shown import shown
from recipe_checks.suggest import normalize_name

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
GIB = 1024**3
MIB = 1024**2


class GpuProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str
    aliases: tuple[str, ...] = ()
    vendor: Literal["nvidia", "amd", "intel"] = "nvidia"
    architecture: str
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    memory_gb: float = Field(gt=0)
    memory_mib: int | None = Field(None, gt=0)
    memory_bandwidth_gbs: float | None = Field(None, gt=0)
    bf16: bool
    fp8: bool
    dense_bf16_tflops: float | None = Field(None, gt=0)
    dense_fp16_tflops: float | None = Field(None, gt=0)
    tdp_w: float | None = Field(None, gt=0)
    sources: tuple[str, ...] = Field(min_length=1)
    notes: str = ""

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _cc_as_text(cls, value: object) -> object:
        return f"{value}" if isinstance(value, float) else value

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def memory_bytes(self) -> int:
        """Total device memory: the reported MiB where known, else the spec sheet's GB taken as GiB."""
        if self.memory_mib:
            return self.memory_mib * MIB
        return int(self.memory_gb * GIB)

    @property
    def supports_bf16(self) -> bool:
        return self.bf16

    @property
    def supports_fp8(self) -> bool:
        return self.fp8

    def describe(self) -> str:
        return (
            f"{self.key} ({self.name}, {self.memory_bytes / GIB:.1f} GiB, sm_{self.compute_capability.replace('.', '')}, "
            f"bf16 {'yes' if self.bf16 else 'no'}, fp8 {'yes' if self.fp8 else 'no'})"
        )


class GpuFamily:
    """The profiles one name matches ('a100': a100-40gb and a100-80gb). Where they agree on what the
    precision and optimizer checks read (vendor, compute capability, bf16, fp8) the family stands in for
    the card there; it has no memory figures: the memory checks need the exact card."""

    def __init__(self, name: str, profiles: tuple[GpuProfile, ...]) -> None:
        self.key = name.strip()  # as written: findings say "bf16 training on v100"
        self.profiles = profiles
        self.name = " or ".join(p.name for p in profiles)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.profiles]

    @property
    def agrees(self) -> bool:
        """Whether every profile has the same vendor, compute capability, bf16 and fp8."""
        return len({(p.vendor, p.compute_capability, p.bf16, p.fp8) for p in self.profiles}) == 1

    def __getattr__(self, attribute: str):
        """A profile attribute the profiles share (compute_capability, supports_bf16); one they do not
        share (memory_bytes) raises NeedsExactCard, which the engine reports as a finding."""
        if attribute.startswith("_") or not hasattr(GpuProfile, attribute) and attribute not in GpuProfile.model_fields:
            raise AttributeError(attribute)
        values = {getattr(p, attribute) for p in self.profiles}
        if len(values) != 1:
            raise NeedsExactCard(self, attribute)
        return values.pop()

    def listing(self) -> str:
        return ", ".join(f"{p.key} ({p.memory_bytes / GIB:.1f} GiB)" for p in self.profiles)

    def shared_traits(self) -> str:
        """What the profiles share, as `describe` words it ('sm_80, bf16 yes, fp8 no')."""
        if not self.agrees:
            return "they differ in compute capability or bf16/fp8"
        p = self.profiles[0]
        return f"sm_{p.compute_capability.replace('.', '')}, bf16 {'yes' if p.bf16 else 'no'}, fp8 {'yes' if p.fp8 else 'no'}"

    def describe(self) -> str:
        exact = "; memory checks need the exact card" if self.agrees else ""
        return f"{self.key} (any of {self.listing()}: {self.shared_traits()}{exact})"


class NeedsExactCard(Exception):
    """A check read what the profiles of an ambiguous name ('a100') do not share (memory, speed): it
    needs the exact card. The engine turns this into a finding that names the profiles."""

    def __init__(self, family: GpuFamily, attribute: str) -> None:
        super().__init__(f"'{family.key}' matches {family.listing()}, which differ in {attribute}")
        self.family = family
        self.attribute = attribute


class UnknownGpuError(LookupError):
    def __init__(self, name: str, known: list[str], suggestions: list[str] | None = None) -> None:
        self.name = name
        self.known = known
        self.suggestions = list(suggestions or [])
        hint = f"; did you mean '{self.suggestions[0]}'?" if self.suggestions else ""
        super().__init__(f"'{name}' is not a known GPU{hint} Known: {', '.join(known)}")


class AmbiguousGpuError(UnknownGpuError):
    """A name that matches several profiles: not one GPU, so nothing that needs the exact card can use it."""

    def __init__(self, name: str, candidates: list[GpuProfile], known: list[str]) -> None:
        super().__init__(name, known, [p.key for p in candidates])
        self.candidates = candidates
        listing = ", ".join(f"{p.key} ({p.memory_bytes / GIB:.1f} GiB)" for p in candidates)
        LookupError.__init__(self, f"'{name}' matches {len(candidates)} GPU profiles: {listing}; name one of them")


class GpuProfileError(ValueError):
    """A profiles file that does not validate: a packaging bug or a bad user-supplied file."""


SHIPPED = "shipped"  # where a profile comes from, when no user file gave it

# What a redefinition changes, as the notes word it: the figures the checks read.
_COMPARED = (
    ("vendor", lambda p: p.vendor),
    ("architecture", lambda p: p.architecture),
    ("memory", lambda p: f"{p.memory_bytes / GIB:.1f} GiB"),
    ("compute capability", lambda p: p.compute_capability),
    ("bf16", lambda p: "yes" if p.bf16 else "no"),
    ("fp8", lambda p: "yes" if p.fp8 else "no"),
    ("bf16 TFLOP/s", lambda p: f"{p.dense_bf16_tflops:g}" if p.dense_bf16_tflops else "unknown"),
    ("fp16 TFLOP/s", lambda p: f"{p.dense_fp16_tflops:g}" if p.dense_fp16_tflops else "unknown"),
    ("bandwidth", lambda p: f"{p.memory_bandwidth_gbs:g} GB/s" if p.memory_bandwidth_gbs else "unknown"),
)


@dataclass(frozen=True)
class ProfileOverride:
    """A user profile file's entry that takes a GPU name already defined: a shipped profile's key or alias,
    or a profile of an earlier file. The checks of that name then read the file's figures, so it is said."""

    file: str  # the user file whose entry wins
    name: str  # the name taken, as the file spells its key
    replaced: GpuProfile
    replaced_from: str  # SHIPPED or the earlier file's path
    by: GpuProfile
    alias: bool = False  # the name was an alias of the replaced profile, whose own key still names it

    @property
    def changes(self) -> list[str]:
        """What the checks read differently under the name ('memory 24.0 GiB -> 931.3 GiB'); none: a copy."""
        return [f"{what} {old} -> {new}" for what, figure in _COMPARED
                if (old := figure(self.replaced)) != (new := figure(self.by))]

    def note(self) -> str:
        """One line: which name, what it meant, what it means now, and how to keep the shipped profile."""
        changed = self.changes
        origin = "the shipped" if self.replaced_from == SHIPPED else f"{shown(self.replaced_from)}'s"
        taken = (f"takes the name '{shown(self.name)}', an alias of {origin} profile '{shown(self.replaced.key)}'"
                 if self.alias else f"replaces {origin} profile of that name")
        return (f"GPU profile '{shown(self.name)}' in {shown(self.file)} {taken} ({shown(self.replaced.name)}): "
                f"{', '.join(changed) if changed else 'the same figures'}; every check against "
                f"'{shown(self.name)}' uses {shown(self.file)}'s figures. To add a card beside "
                f"'{shown(self.name)}' instead, give the profile a name of its own")


def _load(path: Path) -> dict[str, GpuProfile]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GpuProfileError(f"{path}: cannot read GPU profiles: {exc}") from None
    if not isinstance(raw, dict):
        raise GpuProfileError(f"{path}: GPU profiles must be a mapping of name -> profile")
    profiles = {}
    for key, entry in raw.items():
        try:
            profiles[normalize_name(str(key))] = GpuProfile(key=str(key), **(entry or {}))
        except (ValidationError, TypeError) as exc:
            raise GpuProfileError(f"{path}: GPU profile '{key}' is invalid: {exc}") from None
    return profiles


class GpuCatalog:
    """The known GPUs: the shipped profiles plus any the user adds, looked up by forgiving name."""

    def __init__(self, profiles: dict[str, GpuProfile], overrides: tuple[ProfileOverride, ...] = ()) -> None:
        self._profiles = profiles
        self.overrides = overrides  # the names a user file took from the shipped or an earlier file's profiles
        self._index: dict[str, str] = {}
        self._prefixes: dict[str, set[str]] = {}  # a normalized prefix at a separator -> the profiles it starts
        self._spellings: list[tuple[str, str, float]] = []  # (key or alias, key, memory GB): for suggestions
        for norm_key, profile in profiles.items():
            self._index[norm_key] = norm_key
            for alias in profile.aliases:
                self._index.setdefault(normalize_name(alias), norm_key)
            for spelling in (profile.key, *profile.aliases):
                self._spellings.append((spelling, profile.key, profile.memory_gb))
                for prefix in boundary_prefixes(spelling):
                    self._prefixes.setdefault(prefix, set()).add(norm_key)

    @classmethod
    def load(cls, extra_files: tuple[str, ...] = ()) -> GpuCatalog:
        """The shipped profiles, then each user file's in order: a later definition of a name wins, and is
        recorded in `overrides` (a user may correct a shipped figure, but the run must say it did)."""
        profiles = dict(_shipped_profiles())
        origin = dict.fromkeys(profiles, SHIPPED)
        overrides: list[ProfileOverride] = []
        for extra in extra_files:
            before, came_from = dict(profiles), dict(origin)  # what each name the file takes meant until then
            aliases = {normalize_name(a): k for k, p in before.items() for a in p.aliases}
            for norm_key, profile in _load(Path(extra)).items():
                if norm_key in before:
                    replaced = before[norm_key]
                    overrides.append(ProfileOverride(extra, profile.key, replaced, came_from[norm_key], profile))
                    # the card's other spellings ('geforce rtx 4090') still name it: a recipe that used one
                    # must not turn into an unknown GPU because its figures were corrected
                    profile = profile.model_copy(update={"aliases": tuple(dict.fromkeys(
                        (*profile.aliases, *replaced.aliases)))})
                elif norm_key in aliases:  # the catalog's index puts a key before an alias: the name changes card
                    owner = aliases[norm_key]
                    overrides.append(ProfileOverride(extra, profile.key, before[owner], came_from[owner], profile,
                                                     alias=True))
                profiles[norm_key] = profile
                origin[norm_key] = extra
        return cls(profiles, tuple(overrides))

    def override_notes(self) -> list[str]:
        """The notes a run prints about GPU names a user file redefined with other figures (a copy of the
        profile it replaces changes no check: no note)."""
        return [override.note() for override in self.overrides if override.changes]

    @property
    def names(self) -> list[str]:
        return sorted(p.key for p in self._profiles.values())

    def matches(self, name: str) -> list[GpuProfile]:
        """The profiles a name stands for: the one it spells (key or alias), else every profile it is a
        prefix of up to a separator ('rtx3060' of 'rtx3060-12gb', 'a100' of a100-40gb and a100-80gb)."""
        norm = normalize_name(name)
        if norm in self._index:
            return [self._profiles[self._index[norm]]]
        return sorted((self._profiles[k] for k in self._prefixes.get(norm, ())), key=lambda p: p.key)

    def resolve(self, name: str) -> GpuProfile | GpuFamily:
        """The profile a name means, or the family of profiles it matches; UnknownGpuError if none."""
        found = self.matches(name)
        if not found:
            raise UnknownGpuError(name, self.names, related_suggestions(name, self._spellings))
        return found[0] if len(found) == 1 else GpuFamily(name, tuple(found))

    def get(self, name: str) -> GpuProfile:
        """The one profile a name means: UnknownGpuError if none, AmbiguousGpuError if several."""
        found = self.resolve(name)
        if isinstance(found, GpuFamily):
            raise AmbiguousGpuError(name, list(found.profiles), self.names)
        return found

    def __iter__(self):
        return iter(sorted(self._profiles.values(), key=lambda p: p.key))


@functools.cache
def _shipped_profiles() -> dict[str, GpuProfile]:
    return _load(PROFILES_FILE)


def override_notes(extra_files: tuple[str, ...]) -> list[str]:
    """The catalog's override notes for these user files; none where a file does not load (the command that
    loads it says why, as a usage error)."""
    try:
        return GpuCatalog.load(extra_files).override_notes() if extra_files else []
    except GpuProfileError:
        return []
