"""Target GPU profiles: a data file shipped with the package, validated into GpuProfile on load.

Checks always run against the profile of the GPU a recipe targets, never against the local machine.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from checks.suggest import nearest, normalize_name

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


class UnknownGpuError(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        self.suggestions = nearest(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean '{self.suggestions[0]}'?" if self.suggestions else ""
        super().__init__(f"'{name}' is not a known GPU{hint} Known: {', '.join(known)}")


class GpuProfileError(ValueError):
    """A profiles file that does not validate: a packaging bug or a bad user-supplied file."""


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

    def __init__(self, profiles: dict[str, GpuProfile]) -> None:
        self._profiles = profiles
        self._index: dict[str, str] = {}
        for norm_key, profile in profiles.items():
            self._index[norm_key] = norm_key
            for alias in profile.aliases:
                self._index.setdefault(normalize_name(alias), norm_key)

    @classmethod
    def load(cls, extra_files: tuple[str, ...] = ()) -> GpuCatalog:
        profiles = dict(_shipped_profiles())
        for extra in extra_files:
            profiles.update(_load(Path(extra)))
        return cls(profiles)

    @property
    def names(self) -> list[str]:
        return sorted(p.key for p in self._profiles.values())

    def get(self, name: str) -> GpuProfile:
        norm = self._index.get(normalize_name(name))
        if norm is None:
            raise UnknownGpuError(name, self.names)
        return self._profiles[norm]

    def __iter__(self):
        return iter(sorted(self._profiles.values(), key=lambda p: p.key))


@functools.cache
def _shipped_profiles() -> dict[str, GpuProfile]:
    return _load(PROFILES_FILE)
