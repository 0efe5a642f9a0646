"""The conda environments (envs/*.yaml) pin the same versions as constraints.txt (pip).

A job run with --use-conda must compute with the same library versions as the pip install the
tests ran against; a drift between the two files would silently change numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ENV_FILES = ("core.yaml", "evaluation.yaml")
# conda-forge name -> PyPI name, where they differ (lower-case, - and _ folded as pip does).
CONDA_TO_PIP = {"pytorch": "torch", "pytorch-gpu": "torch", "matplotlib-base": "matplotlib",
                "py-opencv": "opencv-python"}
# Conda-only packages with no pip pin to compare against.
CONDA_ONLY = {"python", "pip", "openjdk", "pytorch-cuda", "cuda-version", "nodefaults"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins


def env_pins(path: Path) -> dict[str, tuple[str, str]]:
    """``{pip name: (version, as written)}`` of the conda and pip dependencies of an env file."""
    env = yaml.safe_load(path.read_text())
    pins: dict[str, tuple[str, str]] = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                name, sep, version = spec.partition("==")
                assert sep, f"{path.name}: pip dependency {spec!r} is not pinned with =="
                pins[normalise(name)] = (version.strip(), spec)
            continue
        name, _, version = dep.partition("=")
        name = normalise(name.strip())
        if name in CONDA_ONLY:
            continue
        assert version, f"{path.name}: conda dependency {dep!r} is not pinned"
        pins[normalise(CONDA_TO_PIP.get(name, name))] = (version.lstrip("=").strip(), dep)
    return pins


@pytest.mark.parametrize("env_file", ENV_FILES)
def test_env_pins_agree_with_constraints(repo_root: Path, env_file: str) -> None:
    constraints = read_constraints(repo_root / "constraints.txt")
    pins = env_pins(repo_root / "envs" / env_file)
    shared = sorted(set(pins) & set(constraints))
    if env_file == "core.yaml":
        assert "torch" in shared, "envs/core.yaml must pin PyTorch (as pytorch) like constraints.txt"
    mismatched = {name: (pins[name][1], f"{name}=={constraints[name]}") for name in shared
                  if pins[name][0] != constraints[name]}
    assert not mismatched, f"envs/{env_file} disagrees with constraints.txt: {mismatched}"


def test_env_files_are_valid_conda_envs(repo_root: Path) -> None:
    for env_file in ENV_FILES:
        env = yaml.safe_load((repo_root / "envs" / env_file).read_text())
        assert set(env) >= {"channels", "dependencies"}, env_file
        assert "python=3.11" in env["dependencies"], f"{env_file}: pin python=3.11"
    evaluation = yaml.safe_load((repo_root / "envs" / "evaluation.yaml").read_text())
    assert "openjdk=8" in evaluation["dependencies"], "SPICE needs Java 8 (openjdk=8)"


def test_rules_name_existing_envs(repo_root: Path) -> None:
    """Every `conda:` path a rule file names exists (detectron2.yaml is the features env)."""
    named = {(smk.name, m.group(1)) for smk in sorted((repo_root / "rules").glob("*.smk"))
             for m in re.finditer(r'"\.\./(envs/[\w.-]+\.yaml)"', smk.read_text())}
    assert named, "no rule names a conda env"
    missing = sorted((rule_file, env) for rule_file, env in named
                     if not (repo_root / env).exists())
    if missing == [("features.smk", "envs/detectron2.yaml")]:
        pytest.skip("envs/detectron2.yaml (the features engineer's file) is not written yet")
    assert not missing, f"rule files name conda envs that do not exist: {missing}"


def test_mismatch_is_detected(tmp_path: Path) -> None:
    """The comparison itself: a drifted pin is reported with both spellings."""
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\nnumpy==2.4.6\n")
    env = {"channels": ["conda-forge"], "dependencies": ["python=3.11", "pytorch=2.13.0",
                                                         "numpy=2.4.5"]}
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "core.yaml").write_text(yaml.safe_dump(env))
    pins = env_pins(tmp_path / "envs" / "core.yaml")
    constraints = read_constraints(tmp_path / "constraints.txt")
    assert pins["torch"][0] == constraints["torch"]
    assert pins["numpy"][0] != constraints["numpy"]


# ------------------------------------------------------------------ what each rule imports
#
# For every rule: its `script:` (and what that imports) or the `python -m ...` of its `shell:`,
# followed statically through `mia`'s own modules; every third-party module reached must be
# provided by the rule's `conda:` environment (a conda or pip entry, or a dependency of one, as
# the installed metadata of the same pinned versions says). Imports inside
# ``try: ... except ImportError`` are optional (they fail with a message of their own).
#
# How deep: a workflow script calls into `mia`, so every import of the modules it reaches
# counts, also those inside functions. `python -m mia <group> ...` imports `mia.cli`, which
# registers every command group: their module-level imports count, and everything of the group
# the rule runs.

import ast  # noqa: E402
import sys  # noqa: E402
from importlib import metadata  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RULE = re.compile(r"^(?P<indent>[ \t]*)(?:checkpoint|rule) (?P<name>\w+):[ \t]*$", re.M)


def _module_file(name: str) -> Path | None:
    """The file of a `mia` module or workflow-script helper, or None when not ours."""
    parts = name.split(".")
    if parts[0] == "mia":
        base = REPO_ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    if len(parts) == 1 and (REPO_ROOT / "workflow_scripts" / f"{name}.py").is_file():
        return REPO_ROOT / "workflow_scripts" / f"{name}.py"
    return None


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` that catches ImportError / ModuleNotFoundError?"""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                names = ([handler.type] if not isinstance(handler.type, ast.Tuple)
                         else handler.type.elts) if handler.type is not None else []
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                       for n in names):
                    return True
    return False


def file_imports(path: Path, package: str, nested: bool) -> set[str]:
    """Absolute names of the modules ``path`` imports (module level, or anywhere with
    ``nested``), optional ones left out; ``importlib.import_module`` of string constants in a
    module-level tuple named ``*MODULES`` (mia.cli's command groups) counts as an import."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    nodes = ast.walk(tree) if nested else tree.body
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import) and not _optional(node, parents):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not _optional(node, parents):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{alias.name}" for alias in node.names
                    if _module_file(f"{module}.{alias.name}")}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id.endswith("MODULES") for t in targets) and \
                    isinstance(node.value, ast.Tuple):
                out |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return {m for m in out if m and m != "__future__"}


def third_party_imports(entries: dict[str, bool]) -> dict[str, str]:
    """``{top-level third-party module: the first of our modules that imports it}`` reached
    from ``entries`` (module name -> deep), following `mia` and workflow-script modules."""
    seen: dict[str, bool] = {}
    found: dict[str, str] = {}
    todo = list(entries.items())
    while todo:
        name, deep = todo.pop()
        if seen.get(name) is True or (name in seen and not deep):
            continue
        seen[name] = deep
        path = _module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append((".".join(parts[:i]), False))
        for module in file_imports(path, package, nested=deep):
            if _module_file(module) is not None:
                todo.append((module, deep))
            elif module.split(".")[0] not in sys.stdlib_module_names:
                found.setdefault(module.split(".")[0], name)
    return found


def _block(text: str, start: int, indent: str) -> str:
    lines = text[start:].splitlines()[1:]
    body = []
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) <= len(indent):
            break
        body.append(line)
    return "\n".join(body)


def _directive(body: str, key: str) -> str | None:
    """The value of ``key:`` in a rule's body (on its line, or the lines indented below it)."""
    lines = body.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith(f"{key}:"):
            continue
        inline = stripped[len(key) + 1:].strip()
        if inline:
            return inline
        indent = len(line) - len(line.lstrip())
        value = []
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            value.append(following.strip())
        return "\n".join(v for v in value if v)
    return None


def workflow_rules() -> list[dict[str, Any]]:
    """Every rule of rules/*.smk: name, file, conda env files (all its expression can give),
    script path, shell command."""
    common = (REPO_ROOT / "rules" / "common.smk").read_text()
    constants = dict(re.findall(r'^(\w+_ENV) = "\.\./(envs/[\w.-]+\.yaml)"', common, re.M))
    out = []
    for smk in sorted((REPO_ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in RULE.finditer(text):
            body = _block(text, match.start(), match.group("indent"))
            conda = _directive(body, "conda") or ""
            # every env the expression can give (a rule may choose one by config)
            envs = re.findall(r'"\.\./(envs/[\w.-]+\.yaml)"', conda) + [
                constants[name] for name in re.findall(r"\b\w+_ENV\b", conda)
                if name in constants]
            script = _directive(body, "script")
            shell = _directive(body, "shell")
            out.append({"name": match.group("name"), "file": smk.name, "conda": envs,
                        "script": script.strip('"').removeprefix("../") if script else None,
                        "shell": " ".join(re.findall(r'"([^"]*)"', shell)) if shell else None})
    return out


def rule_entries(rule: dict[str, str | None]) -> dict[str, bool]:
    """The modules a rule's job starts from (name -> followed deeply)."""
    if rule["script"]:
        script = REPO_ROOT / rule["script"]
        return {m: True for m in file_imports(script, "", nested=True)}
    module = re.search(r"python -m ([\w.]+)(?: (\w+))?", rule["shell"] or "")
    if not module:
        return {}
    if module.group(1) == "mia":  # mia.cli: every group registered, the one run followed deeply
        entries = {"mia.__main__": False, "mia.cli": False}
        for m in file_imports(REPO_ROOT / "mia" / "cli.py", "mia", False):
            path = _module_file(m)
            if m.startswith("mia.") and path is not None:
                groups = re.findall(r'subparsers\.add_parser\(\s*"([\w-]+)"', path.read_text())
                entries[m] = module.group(2) in groups
        return entries
    return {module.group(1): True}


def _dist_closure(names: set[str]) -> set[str]:
    """Distributions ``names`` install, with their requirements (installed metadata)."""
    out, todo = set(), list(names)
    while todo:
        name = normalise(todo.pop())
        if name in out:
            continue
        out.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return out


def env_provides(env_file: Path) -> set[str]:
    """Distribution names (pip spelling) an environment installs, dependencies included."""
    env = yaml.safe_load(env_file.read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                spec = spec.split("#", 1)[0].strip().strip('"')
                if spec.startswith("git+"):
                    listed.add(spec.rsplit("/", 1)[-1].split(".git")[0].split("@")[0])
                else:
                    listed.add(re.split(r"[<>=!~\s\[]", spec, maxsplit=1)[0])
        else:
            name = normalise(re.split(r"[<>=!~\s]", dep, maxsplit=1)[0])
            listed.add(CONDA_TO_PIP.get(name, name))
    return _dist_closure(listed)


IMPORT_TO_DIST = {top: dists for top, dists in metadata.packages_distributions().items()}


def missing_from_env(imports: dict[str, str], provided: set[str]) -> dict[str, str]:
    """Imports (-> who imports them) whose distribution the environment does not install."""
    out = {}
    for module, importer in imports.items():
        dists = {normalise(d) for d in IMPORT_TO_DIST.get(module, [module])}
        if not dists & provided:
            out[module] = importer
    return out


@pytest.mark.parametrize("rule", [r for r in workflow_rules() if r["script"] or r["shell"]],
                         ids=lambda r: r["name"])
def test_each_rule_env_provides_what_its_job_imports(rule: dict[str, Any]) -> None:
    """--sdm conda runs the rule in its envs/*.yaml: every module its script or command
    reaches must be installed there (jsonschema was missing from evaluation.yaml, which every
    `mia` command imports through mia.cli -> mia.config_cli -> mia.config)."""
    assert rule["conda"], f"{rule['file']}: rule {rule['name']} runs code but names no conda env"
    entries = rule_entries(rule)
    assert entries, f"rule {rule['name']}: neither a script nor a `python -m` command found"
    imports = third_party_imports(entries)
    assert imports, rule
    for env in rule["conda"]:
        missing = missing_from_env(imports, env_provides(REPO_ROOT / env))
        assert not missing, (f"{rule['file']}: rule {rule['name']} runs in {env}, which lacks "
                             f"{sorted(missing)} (imported by {missing})")


def test_import_analysis_finds_what_it_must() -> None:
    """The analysis itself: the evaluation command reaches pycocoevalcap (inside a function),
    not torch; a training script reaches torch; validating a config (mia.config, deep) reaches
    jsonschema, which mia.config imports only there (the GPU image has none)."""
    rules = {r["name"]: r for r in workflow_rules()}
    assert {"train_captioner", "evaluate_captions", "render_report"} <= set(rules)
    evaluate = third_party_imports(rule_entries(rules["evaluate_captions"]))
    assert {"pycocoevalcap", "numpy", "yaml"} <= set(evaluate)
    assert "jsonschema" in third_party_imports({"mia.config": True})
    assert "jsonschema" not in third_party_imports({"mia.config": False})  # TYPE_CHECKING only
    assert "torch" not in evaluate, evaluate
    train = third_party_imports(rule_entries(rules["train_captioner"]))
    assert {"torch", "h5py", "numpy", "tqdm"} <= set(train)
    assert "detectron2" not in third_party_imports(
        rule_entries(rules["extract_region_features"]))  # optional: try/except ImportError
    assert missing_from_env({"jsonschema": "mia.config"}, {"numpy"}) == {
        "jsonschema": "mia.config"}


#: Packages too large to carry where nothing imports them (GBs with CUDA).
HEAVY = {"torch", "torchvision"}


def _env_imports(env: str) -> set[str]:
    imports: set[str] = set()
    for rule in workflow_rules():
        if env in rule["conda"] and (rule["script"] or rule["shell"]):
            imports |= set(third_party_imports(rule_entries(rule)))
    return imports


@pytest.mark.parametrize("env_file", ["core.yaml", "evaluation.yaml", "detectron2.yaml"])
def test_no_env_carries_pytorch_or_pandas_for_nothing(env_file: str) -> None:
    """evaluation.yaml pinned pytorch, which no evaluation job imports; pandas was in every env
    and in pyproject, and no module imports it."""
    imports = _env_imports(f"envs/{env_file}")
    assert imports, env_file
    dists = {normalise(d) for m in imports for d in IMPORT_TO_DIST.get(m, [m])}
    needed = _dist_closure(dists)
    listed = env_provides(REPO_ROOT / "envs" / env_file) & (HEAVY | {"pandas"})
    assert listed <= needed, f"envs/{env_file} carries {sorted(listed - needed)}, which none of "\
                             f"its rules imports (they import {sorted(imports)})"


def test_every_runtime_dependency_is_imported() -> None:
    """pyproject's dependencies are what `mia` imports, nothing more (pandas was declared)."""
    import tomllib

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"]
    names = {normalise(re.split(r"[<>=!~\s\[;]", d, maxsplit=1)[0]) for d in declared}
    imported: set[str] = set()
    for path in (REPO_ROOT / "mia").rglob("*.py"):
        package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for module in file_imports(path, package.rpartition(".")[0], nested=True):
            imported |= {normalise(d) for d in IMPORT_TO_DIST.get(module.split(".")[0], [])}
    assert names - imported == set(), f"declared but never imported: {sorted(names - imported)}"
