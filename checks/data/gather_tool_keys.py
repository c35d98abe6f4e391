"""Writes checks/data/tool_keys.yaml: the top-level keys Axolotl, LLaMA-Factory and TRL accept in their configs, read
from each tool's own argument classes, so RC110 can tell a key the translation does not model from a misspelt one.

How it was produced (the data file names the commits it was run at):

    python checks/data/gather_tool_keys.py \
        --axolotl /path/to/axolotl.git --axolotl-commit 067b021c8b87a9e5e380b9173c704cf7340e30f5 \
        --llamafactory /path/to/LLaMA-Factory.git --llamafactory-commit ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30 \
        > checks/data/tool_keys.yaml

Axolotl and LLaMA-Factory are read from their source at a commit (`git show`, no import: neither is installed here):
every annotated class attribute of a class and of the classes it derives from, followed through the files read,
with a pydantic `Field(alias=...)` counted under both names (AxolotlInputConfig sets populate_by_name). TRL is read
from the installed package (dataclasses.fields). Fields of transformers' TrainingArguments are left out: RC110
reads them from the installed transformers at run time (the `passes_to` of a tool says which class).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import subprocess
import sys
from collections.abc import Iterable

import yaml

AXOLOTL_SCHEMAS = "src/axolotl/utils/schemas"
AXOLOTL_INTEGRATIONS = "src/axolotl/integrations"
LLAMAFACTORY_HPARAMS = "src/llamafactory/hparams"
# hparams/parser.py _TRAIN_ARGS: the classes `llamafactory-cli train` parses a config into
LLAMAFACTORY_ROOTS = ("ModelArguments", "DataArguments", "TrainingArguments", "FinetuningArguments",
                      "GeneratingArguments")


@dataclasses.dataclass
class ClassDef:
    name: str
    path: str
    bases: list[str]
    fields: list[str]


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], check=True, capture_output=True, text=True).stdout


def _files(repo: str, commit: str, folder: str) -> list[str]:
    return [p for p in _git(repo, "ls-tree", "-r", "--name-only", commit, folder).split() if p.endswith(".py")]


def _field_names(node: ast.AnnAssign) -> list[str]:
    """The attribute's name and, for a pydantic Field(alias=...) or validation_alias=AliasChoices(...), its aliases."""
    if not isinstance(node.target, ast.Name) or node.target.id.startswith("_"):
        return []
    annotation = ast.unparse(node.annotation)
    if annotation.startswith(("ClassVar", "typing.ClassVar")):
        return []
    names = [node.target.id]
    call = node.value
    if isinstance(call, ast.Call) and ast.unparse(call.func).endswith("Field"):
        for keyword in call.keywords:
            if keyword.arg in ("alias", "validation_alias"):
                for const in ast.walk(keyword.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        names.append(const.value)
    return names


def _classes(repo: str, commit: str, paths: Iterable[str]) -> dict[str, list[ClassDef]]:
    table: dict[str, list[ClassDef]] = {}
    for path in paths:
        tree = ast.parse(_git(repo, "show", f"{commit}:{path}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                fields = [n for item in node.body if isinstance(item, ast.AnnAssign) for n in _field_names(item)]
                bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                table.setdefault(node.name, []).append(ClassDef(node.name, path, bases, fields))
    return table


def _resolve(root: str, table: dict[str, list[ClassDef]], prefer: str = "") -> tuple[dict[str, ClassDef], set[str]]:
    """The class and every base class found in `table` (the one under `prefer` first where a name is defined
    twice), and the names of the bases not found (external: pydantic's BaseModel, transformers' classes)."""
    found: dict[str, ClassDef] = {}
    external: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in found or name in external:
            continue
        candidates = sorted(table.get(name, []), key=lambda c: not c.path.startswith(prefer))
        if not candidates:
            external.add(name)
            continue
        found[name] = candidates[0]
        todo.extend(candidates[0].bases)
    return found, external


def _entry(classes: dict[str, ClassDef]) -> dict[str, dict]:
    return {c.name: {"file": c.path, "keys": sorted(set(c.fields))} for c in sorted(classes.values(), key=lambda c: c.name)
            if c.fields}


def axolotl(repo: str, commit: str) -> dict:
    schema_files = _files(repo, commit, AXOLOTL_SCHEMAS)
    plugin_files = _files(repo, commit, AXOLOTL_INTEGRATIONS)
    table = _classes(repo, commit, [*schema_files, *plugin_files])
    classes, _ = _resolve("AxolotlInputConfig", table, prefer=AXOLOTL_SCHEMAS)
    # each plugin's get_input_args() names its pydantic model as a dotted string: its keys are valid once the
    # plugin is listed under `plugins:` (integrations/base.py merge_input_args)
    plugins: dict[str, ClassDef] = {}
    for path in plugin_files:
        for node in ast.walk(ast.parse(_git(repo, "show", f"{commit}:{path}"))):
            if isinstance(node, ast.FunctionDef) and node.name == "get_input_args":
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str) and \
                            const.value.startswith("axolotl.integrations."):
                        folder = "/".join(path.split("/")[:4])
                        found, _ = _resolve(const.value.split(".")[-1], table, prefer=folder)
                        plugins.update({k: v for k, v in found.items() if v.path.startswith(AXOLOTL_INTEGRATIONS)})
    return {
        "source": f"axolotl-ai-cloud/axolotl {_git(repo, 'describe', '--tags', commit).strip()} at {commit}: "
                  f"{AXOLOTL_SCHEMAS}/config.py AxolotlInputConfig and its bases; plugins' get_input_args() models "
                  f"under {AXOLOTL_INTEGRATIONS}",
        "short": f"Axolotl's config schema at {commit[:7]}",
        "commit": commit,
        "passes_to": None,  # Axolotl builds TrainingArguments itself: its config's keys are its schema's only
        "classes": _entry(classes),
        "plugin_classes": _entry(plugins),
    }


def llamafactory(repo: str, commit: str) -> dict:
    table = _classes(repo, commit, _files(repo, commit, LLAMAFACTORY_HPARAMS))
    classes: dict[str, ClassDef] = {}
    external: set[str] = set()
    for root in LLAMAFACTORY_ROOTS:
        found, outside = _resolve(root, table)
        classes.update(found)
        external |= outside
    # training_args.py: BaseTrainingArguments is transformers' Seq2SeqTrainingArguments (mcore_adapter's where
    # installed, for Megatron training)
    assert "BaseTrainingArguments" in external, external
    return {
        "source": f"hiyouga/LLaMA-Factory at {commit}: {LLAMAFACTORY_HPARAMS} (parser.py _TRAIN_ARGS: "
                  f"{', '.join(LLAMAFACTORY_ROOTS)} and their bases)",
        "short": f"LLaMA-Factory's hparams at {commit[:7]}",
        "commit": commit,
        "passes_to": "Seq2SeqTrainingArguments",
        "classes": _entry(classes),
    }


def trl() -> dict:
    import transformers
    import trl as trl_package
    from trl.scripts.utils import DatasetMixtureConfig

    base = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    # every trainer's config: the `trl` command's parser has a subparser per trainer, and TrlParser's
    # set_defaults_with_config consumes a config key any of them takes
    configs = [getattr(trl_package, n) for n in sorted(dir(trl_package)) if n.endswith("Config")]
    configs = [c for c in configs if dataclasses.is_dataclass(c)]
    classes = {}
    for cls in configs:
        own = sorted({f.name for f in dataclasses.fields(cls)} - base)
        if own:
            classes[cls.__name__] = {"file": cls.__module__.replace(".", "/") + ".py", "keys": own}
    script = trl_package.ScriptArguments
    classes["ScriptArguments"] = {"file": script.__module__.replace(".", "/") + ".py",
                                  "keys": sorted(f.name for f in dataclasses.fields(script))}
    # the training scripts' own argument classes (trl/scripts/grpo.py GRPOScriptArguments: reward_funcs, ...), the
    # ScriptArguments subclasses of the scripts that build trainers (vllm_serve's ScriptArguments is a server's)
    import importlib
    import pkgutil

    from trl import scripts

    for module_info in pkgutil.iter_modules(scripts.__path__):
        if module_info.name in ("utils", "vllm_serve"):
            continue
        try:
            module = importlib.import_module(f"trl.scripts.{module_info.name}")
        except ImportError:  # a script whose optional dependency is missing: none of these define arguments
            print(f"skipped trl.scripts.{module_info.name}: it does not import", file=sys.stderr)
            continue
        for name, obj in vars(module).items():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__ \
                    and issubclass(obj, script):
                classes[name] = {"file": module.__name__.replace(".", "/") + ".py",
                                 "keys": sorted(f.name for f in dataclasses.fields(obj))}
    # TrlParser.parse_args_and_config pops `env` (environment variables) before the dataclasses see the config
    classes["TrlParser"] = {"file": "trl/scripts/utils.py", "keys": ["env"]}
    classes.setdefault("DatasetMixtureConfig", {"file": "trl/scripts/utils.py",
                                                "keys": sorted(f.name for f in dataclasses.fields(DatasetMixtureConfig))})
    return {
        "source": f"TRL {trl_package.__version__} (the installed package, dataclasses.fields): every trainer config's "
                  "own fields, ModelConfig, ScriptArguments and the scripts' subclasses of it, DatasetMixtureConfig, "
                  "TrlParser's `env`",
        "short": f"TRL {trl_package.__version__}'s configs",
        "version": trl_package.__version__,
        "passes_to": "TrainingArguments",
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axolotl", required=True, help="the git directory of axolotl-ai-cloud/axolotl")
    parser.add_argument("--axolotl-commit", required=True)
    parser.add_argument("--llamafactory", required=True, help="the git directory of hiyouga/LLaMA-Factory")
    parser.add_argument("--llamafactory-commit", required=True)
    args = parser.parse_args(argv)
    data = {"axolotl": axolotl(args.axolotl, args.axolotl_commit),
            "llamafactory": llamafactory(args.llamafactory, args.llamafactory_commit),
            "trl": trl()}
    sys.stdout.write(
        "# Generated by checks/data/gather_tool_keys.py (its docstring says how); do not edit by hand.\n"
        "# The top-level keys each tool's config accepts, per class, with the file that defines it. A tool with\n"
        "# `passes_to` also accepts every field of that transformers class: read from the installed transformers.\n"
    )
    yaml.safe_dump(data, sys.stdout, sort_keys=False, width=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
