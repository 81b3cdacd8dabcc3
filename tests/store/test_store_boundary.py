"""The store's shape: one front for other packages; an index whose parts only their own operations change."""

import ast
from pathlib import Path

import kvmesh
from kvmesh.store.index import ChunkIndex
from kvmesh.store.record_table import RecordTable
from kvmesh.store.records import ChunkRecord
from kvmesh.store.stats import StoreLog
from kvmesh.store.tier_book import TierBook

ROOT = Path(kvmesh.__file__).parent
STORE = ROOT / "store"
# what other packages may import from kvmesh.store: the front, types, event kinds, same-host pool mapping,
# what an encoder is (chunk_codec) and what a recode answers (recode's Recoded and outcomes)
OPEN_TO_OTHERS = {"kvmesh.store", "kvmesh.store.chunk_store", "kvmesh.store.records", "kvmesh.store.events",
                  "kvmesh.store.slab_pool", "kvmesh.store.disk_tier", "kvmesh.store.chunk_codec",
                  "kvmesh.store.recode"}


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


# the names the store's modules give the index and its parts (`x` or `<anything>.x`), and what each names
PART_NAMES = {"ix": ChunkIndex, "index": ChunkIndex, "_index": ChunkIndex,
              "rec": RecordTable, "records": RecordTable, "_records": RecordTable,
              "book": TierBook, "_book": TierBook, "_log": StoreLog}
# the only modules that write a ChunkRecord's fields (records.py: its constructor)
RECORD_WRITERS = {"records.py", "record_table.py", "tier_book.py"}


def operations(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def part_uses(tree: ast.AST) -> set[tuple[type, str]]:
    """(part, attribute) for every attribute read off a name of the index or a part."""
    uses = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if name in PART_NAMES:
                uses.add((PART_NAMES[name], node.attr))
    return uses


def test_the_stores_parts_reach_the_index_only_through_its_operations():
    for path in STORE.glob("*.py"):
        uses = part_uses(ast.parse(path.read_text()))
        bad = sorted(f"{part.__name__}.{name}" for part, name in uses if name not in operations(part))
        assert bad == [], f"{path.name} reaches into the index: {bad}"


def test_the_index_is_reached_through_each_of_its_parts():
    """The check above sees the parts: the store's modules use every part by one of its names."""
    used = set()
    for path in STORE.glob("*.py"):
        used |= {part for part, _ in part_uses(ast.parse(path.read_text()))}
    assert used == {ChunkIndex, RecordTable, TierBook, StoreLog}


def assigned(node: ast.AST) -> list[ast.expr]:
    """What an assignment statement writes, tuple targets unpacked."""
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
    flat = []
    while targets:
        target = targets.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            targets.extend(target.elts)
        else:
            flat.append(target.value if isinstance(target, ast.Starred) else target)
    return flat


def test_only_the_record_table_and_the_tier_book_write_records():
    fields = set(ChunkRecord.__slots__)
    for path in STORE.glob("*.py"):
        if path.name in RECORD_WRITERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            for target in assigned(node):
                assert not (isinstance(target, ast.Attribute) and target.attr in fields), (
                    f"{path.name}:{target.lineno} writes a record's {target.attr}")
