"""One AsyncAPI 3.0 document for the whole system (all four services) on one broker.

    BROKER=nats .venv/bin/python scripts/asyncapi_combined.py            # → artifacts/asyncapi-nats.json
    BROKER=rabbit .venv/bin/python -m scripts.asyncapi_combined -o x.json
    .venv/bin/python scripts/asyncapi_combined.py --stdout

Imports `services.<name>` for order, inventory, payment and notification under the
current environment (`BROKER`, `BROKER_URL`, `CHANNEL_NAMESPACE`; nothing connects to a
broker) and merges the four documents FastStream generates (the same ones
`GET /docs/asyncapi.json` and `faststream docs gen services.<name>:app` give).

Merge contract:
* `channels`, `operations`, `servers` and every `components` section are unioned by key.
  An entry that several services declare identically (a shared dead-letter publisher,
  an event schema) appears once; entries that differ under the same key are all kept,
  the later ones renamed `<key>@<service>` with every `$ref` to them rewritten.
* Each operation is tagged with the consumer name(s) that perform it
  (`inventory-service`, …), so the combined document still says who sends and who receives.
* The result is plain JSON, `asyncapi` = the services' version (3.0.0).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICES: tuple[str, ...] = ("order", "inventory", "payment", "notification")
SECTIONS: tuple[tuple[str, ...], ...] = (("servers",), ("channels",), ("operations",))
"""Top-level keyed sections; `components.*` sections are added per document."""

Spec = dict[str, Any]


def service_spec(name: str) -> Spec:
    """The AsyncAPI document of `services.<name>` as JSON-ready data (imports the module)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(f"services.{name}")
    return dict(module.app.schema.to_specification().to_jsonable())


def _escape(key: str) -> str:
    """A key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _rewrite_refs(node: Any, renames: Mapping[str, str]) -> Any:
    """`node` with every `$ref` whose target (or a prefix of it) was renamed pointing at the new name."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                out[k] = _renamed_ref(v, renames)
            else:
                out[k] = _rewrite_refs(v, renames)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, renames) for v in node]
    return node


def _renamed_ref(ref: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if ref == old or ref.startswith(old + "/"):
            return new + ref[len(old) :]
    return ref


def _sections(spec: Spec) -> list[tuple[str, ...]]:
    components = spec.get("components") or {}
    return [*SECTIONS, *(("components", kind) for kind in components)]


def _get(spec: Spec, path: Sequence[str]) -> dict[str, Any]:
    node: Any = spec
    for part in path:
        node = node.get(part) or {}
    return node if isinstance(node, dict) else {}


def _setdefault(spec: Spec, path: Sequence[str]) -> dict[str, Any]:
    node = spec
    for part in path:
        node = node.setdefault(part, {})
    return node


def _pointer(path: Sequence[str], key: str) -> str:
    return "#/" + "/".join([*path, _escape(key)])


def _tag(operation: dict[str, Any], owner: str) -> None:
    tags = operation.setdefault("tags", [])
    if all(t.get("name") != owner for t in tags):
        tags.append({"name": owner})


def merge(specs: Mapping[str, Spec], *, title: str, description: str) -> Spec:
    """Merge per-service documents (service name → document) as the module docstring says."""
    merged: Spec = {}
    plain: dict[tuple[tuple[str, ...], str], Any] = {}  # untagged operations, for equality checks
    versions = {spec.get("asyncapi", "3.0.0") for spec in specs.values()}
    if len(versions) != 1:
        raise ValueError(f"services disagree on the AsyncAPI version: {sorted(versions)}")
    for service, spec in specs.items():
        owner = f"{service}-service"
        renames: dict[str, str] = {}
        while True:  # rename colliding keys until renaming causes no new collision
            current = _rewrite_refs(spec, renames)
            added = False
            for path in _sections(current):
                target = _get(merged, path)
                for key, value in _get(current, path).items():
                    old = _pointer(path, key)
                    if old in renames or key not in target:
                        continue
                    if plain.get((path, key), target[key]) != value:
                        renames[old] = _pointer(path, f"{key}@{service}")
                        added = True
            if not added:
                break
        for path in _sections(current):
            target = _setdefault(merged, path)
            for key, value in _get(current, path).items():
                new_key = f"{key}@{service}" if _pointer(path, key) in renames else key
                if new_key not in target:
                    target[new_key] = copy.deepcopy(value)
                    plain[(path, new_key)] = value
                if path == ("operations",):
                    _tag(target[new_key], owner)
    info = {"title": title, "version": next(iter(specs.values()))["info"].get("version", "0.1.0")}
    info["description"] = description
    document: Spec = {"asyncapi": versions.pop(), "info": info}
    for spec in specs.values():
        if "defaultContentType" in spec:
            document["defaultContentType"] = spec["defaultContentType"]
            break
    document.update(merged)
    return document


def combined_spec(services: Sequence[str] = SERVICES) -> Spec:
    """The whole system's document under the current environment (see module docstring)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from brokers.credentials import redacted
    from config import get_settings

    settings = get_settings()
    specs = {name: service_spec(name) for name in services}
    description = (
        f"All Switchboard services ({', '.join(f'{s}-service' for s in services)}) on `{settings.broker}`"
        f" ({redacted(settings.resolved_broker_url)}). Each operation is tagged with the service that performs it;"
        " `<channel>.DLT` channels carry dead letters (original bytes plus `x-*` envelope headers)."
    )
    return merge(specs, title="Switchboard", description=description)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the combined document; prints the path written (or the JSON with --stdout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, help="output file (default artifacts/asyncapi-<BROKER>.json)")
    parser.add_argument("--stdout", action="store_true", help="print the document instead of writing a file")
    args = parser.parse_args(argv)
    document = combined_spec()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.stdout:
        sys.stdout.write(text)
        return 0
    from config import get_settings

    out: Path = args.out or ROOT / "artifacts" / f"asyncapi-{get_settings().broker}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
