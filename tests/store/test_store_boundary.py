"""The store's shape: one front for other packages, an index only its own operations change."""

import ast
from pathlib import Path

import kvmesh
from kvmesh.store.index import ChunkIndex

ROOT = Path(kvmesh.__file__).parent
STORE = ROOT / "store"
# what other packages may import from kvmesh.store: the front, types, event kinds, same-host pool mapping
OPEN_TO_OTHERS = {"kvmesh.store", "kvmesh.store.chunk_store", "kvmesh.store.records", "kvmesh.store.events",
                  "kvmesh.store.slab_pool", "kvmesh.store.disk_tier"}


def imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def open_to_others(name: str) -> bool:
    """A module other packages may import, or a name imported from one."""
    parent = name.rsplit(".", 1)[0]
    return name in OPEN_TO_OTHERS or name == "kvmesh.store.ChunkStore" or (
        parent in OPEN_TO_OTHERS and parent != "kvmesh.store")


def test_other_packages_use_only_the_store_front():
    offending = {}
    for path in ROOT.rglob("*.py"):
        if STORE in path.parents:
            continue
        store_imports = {m for m in imported_modules(ast.parse(path.read_text())) if m.startswith("kvmesh.store.")}
        bad = {m for m in store_imports if not open_to_others(m)}
        if bad:
            offending[str(path.relative_to(ROOT))] = sorted(bad)
    assert offending == {}


def index_uses(tree: ast.AST) -> set[str]:
    """Attributes read off the index: `ix.<name>` or `<anything>._index.<name>`."""
    uses = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "ix") or (
                    isinstance(base, ast.Attribute) and base.attr == "_index"):
                uses.add(node.attr)
    return uses


def test_the_stores_parts_reach_the_index_only_through_its_operations():
    operations = {name for name, value in vars(ChunkIndex).items()
                  if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    for path in STORE.glob("*.py"):
        if path.name == "index.py":
            continue
        uses = index_uses(ast.parse(path.read_text()))
        assert uses <= operations, f"{path.name} reaches into the index: {sorted(uses - operations)}"
