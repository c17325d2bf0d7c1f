"""The package layout's rules, read from the source: the package root holds only command lines,
imports point one way, no cycles, no command line imports another, only `models/` and `weights/`
name parameters, and the README lists every module."""

from __future__ import annotations

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "tcclip_jax")
CLI = {
    "tcclip_jax.train.__main__",
    "tcclip_jax.evaluate",
    "tcclip_jax.report",
    "tcclip_jax.predict",
    "tcclip_jax.embed",
    "tcclip_jax.search",
    "tcclip_jax.app",
    "tcclip_jax.visualize",
    "tcclip_jax.bench.__main__",
    "tcclip_jax.bench.demo",
    "tcclip_jax.aot",
    "tcclip_jax.export",
    "tcclip_jax.data.bench",
}
# Layers, lowest first: a module never imports from a layer above its own.
RUNTIME = ("tcclip_jax.runtime",)
LOWER = ("tcclip_jax.ops", "tcclip_jax.models", "tcclip_jax.data")
UPPER = ("tcclip_jax.train", "tcclip_jax.evaluation", "tcclip_jax.config", "tcclip_jax.apps")
# Parameter names that only models/ and the foreign format readers may spell out: every
# top-level entry of VideoCLIP's tree (a string that is the name, or a path starting with it) and
# names that occur nowhere else (anywhere in a string).
TOP_LEVEL_PARAMS = (
    "visual",
    "token_embedding",
    "positional_embedding",
    "transformer",
    "ln_final",
    "text_projection",
    "logit_scale",
    "prompt_learner",
    "prompt_generation_layer",
)
PARAM_NAMES = (
    "local_global_bias_table",
    "resblocks_",
    *TOP_LEVEL_PARAMS[1:3],
    *TOP_LEVEL_PARAMS[-2:],
)


def _names_a_parameter(s: str) -> bool:
    head = s.split("/", 1)[0].split(".", 1)[0]
    return head in TOP_LEVEL_PARAMS or any(p in s for p in PARAM_NAMES)


def test_the_top_level_parameter_list_is_the_models(tiny_config):
    import jax
    import jax.numpy as jnp

    from tcclip_jax.models import VideoCLIP

    res = tiny_config.image_resolution
    shapes = jax.eval_shape(
        VideoCLIP(tiny_config).init,
        jax.random.key(0),
        jnp.zeros((1, tiny_config.num_frames, res, res, 3)),
        jnp.zeros((2, 77), jnp.int32),
    )
    assert set(shapes["params"]) == set(TOP_LEVEL_PARAMS)


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: str) -> set[str]:
    """Every tcclip_jax module `path` imports (anywhere in the file), resolved to a module."""
    found = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n.startswith("tcclip_jax.")}
    return found - {"tcclip_jax"}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def test_the_package_root_holds_only_command_lines():
    root = {
        n
        for n, path in MODULES.items()
        if os.path.dirname(path) == PACKAGE and os.path.basename(path) != "__init__.py"
    }
    assert root <= CLI, f"libraries in the package root: {sorted(root - CLI)}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith(RUNTIME)))
def test_runtime_imports_only_runtime(name):
    outside = sorted(d for d in GRAPH[name] if not d.startswith(RUNTIME))
    assert not outside, f"{name} imports {outside}"


def test_the_graph_is_not_empty():
    assert "tcclip_jax.models.params" in GRAPH["tcclip_jax.train.optim"]


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in GRAPH[node]:
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith(LOWER)))
def test_lower_packages_never_import_upward(name):
    upward = sorted(d for d in GRAPH[name] if d.startswith(UPPER) or d in CLI)
    assert not upward, f"{name} imports {upward}"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_a_command_line(name):
    assert not GRAPH[name] & CLI, f"{name} imports {sorted(GRAPH[name] & CLI)}"


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in MODULES
        if not n.startswith(("tcclip_jax.models", "tcclip_jax.weights", "tcclip_jax.ops"))
    ),
)
def test_only_models_and_weights_name_parameters(name):
    with open(MODULES[name]) as f:
        code = f.read()
    strings = [
        n.value
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    docstrings = {
        ast.get_docstring(n, clean=False)
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
    }
    named = [s for s in strings if s not in docstrings and _names_a_parameter(s)]
    assert not named, f"{name} names parameters: {named}"


def test_readme_layout_lists_every_module():
    with open(os.path.join(REPO, "README.md")) as f:
        layout = f.read().split("## Layout", 1)[1]
    listed = set()
    for row in re.findall(r"^\| `([^|]+)\|", layout, flags=re.M):
        listed |= {p.strip().strip("`").strip() for p in row.split(",")}
    missing = []
    for path in MODULES.values():
        rel = os.path.relpath(path, REPO)
        base = os.path.basename(rel)
        if base == "__init__.py":
            continue
        folder = os.path.dirname(rel) + "/"
        if not ({rel, base} & listed) and folder not in listed:
            missing.append(rel)
    assert not missing, f"README Layout does not list {missing}"
