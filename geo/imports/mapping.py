"""From a file's columns to a collection's fields: the mapping, its guesses, its application.

A mapping (API.md) is ``{"fields": {our_field: source_column}, "values":
{our_field: {source_value: our_value, "*": any_other}}, "defaults": {our_field:
value}}``.  Fields the mapping does not name are guessed from the columns:
the same name in any case, a known synonym (``Name``, ``amenity``, ``floors``...),
or, in a Shapefile, the name cut to 10 characters (``wall_mater``).  Enum values are
matched in any case with spaces or hyphens for underscores (``Water Point`` ->
``water_point``).  What it resolves to is shown by a dry run.

>>> from geo.layers.registry import FACILITIES
>>> m = Mapping.parse({"defaults": {"type": "school"}})
>>> plan = m.resolve(FACILITIES, ["Name", "status"])
>>> plan.columns["name"], plan.guessed
('Name', ['name'])
>>> plan.apply({"Name": " Olympic Primary ", "status": None})["type"]
'school'
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from geo.core.errors import BadRequest
from geo.exports.shapefile import SHORT_NAMES
from geo.imports.sources import text_value
from geo.layers.registry import Collection, Property

__all__ = ["SYNONYMS", "Mapping", "Plan"]

#: Source column names (case-insensitive) that mean one of our fields, besides its own name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "name": ("title", "label", "settlement_name", "facility_name"),
    "alt_names": ("alt_name", "alternative_names", "other_names"),
    "type": ("facility_type", "facilityty", "amenity", "category", "kind", "class"),
    "condition": ("functional", "functionality"),
    "structure_number": (
        "structure_no",
        "structure_num",
        "struct_no",
        "str_no",
        "number",
        "structure",
        "house_no",
    ),
    "use": ("usage", "building_use", "structure_use", "use_type"),
    "wall_material": ("wall", "walls", "wall_type"),
    "roof_material": ("roof", "roof_type"),
    "storeys": ("stories", "floors", "levels", "building:levels", "building_levels"),
    "county": ("county_name",),
    "ward": ("ward_name",),
}
_SEPARATORS = re.compile(r"[\s\-]+")
SHAPEFILE_NAME = 10


def _enum_key(value: str) -> str:
    return _SEPARATORS.sub("_", value.strip()).casefold()


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping document (all parts optional)."""

    fields: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    source_id: str | None = None
    geometry: str | None = None
    households: Mapping | None = None
    repeat: str | None = None

    @classmethod
    def parse(cls, document: Any) -> Mapping:
        """Check a mapping's shape (``None`` is the empty mapping)."""
        if document is None:
            return cls()
        if isinstance(document, str | bytes):
            try:
                document = json.loads(document) if document else {}
            except json.JSONDecodeError as exc:
                raise BadRequest(
                    f"mapping is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                    field="mapping",
                ) from exc
        if not isinstance(document, dict):
            raise BadRequest("mapping must be a JSON object", field="mapping")
        known = {"fields", "values", "defaults", "source_id", "geometry", "households", "repeat"}
        unknown = set(document) - known
        if unknown:
            raise BadRequest(
                f"mapping has unknown member(s) {', '.join(sorted(unknown))}; "
                "it takes fields, values, defaults, source_id, geometry and households",
                field="mapping",
            )
        households = document.get("households")
        if households is not None:
            if not isinstance(households, dict) or not isinstance(households.get("repeat"), str):
                raise BadRequest(
                    "mapping.households must be an object naming its 'repeat' group",
                    field="mapping",
                )
            households = cls.parse(households)
        repeat = document.get("repeat")
        fields = document.get("fields") or {}
        values = document.get("values") or {}
        defaults = document.get("defaults") or {}
        if not isinstance(fields, dict) or not all(
            isinstance(v, str) or v is None for v in fields.values()
        ):
            raise BadRequest("mapping.fields must map our fields to column names", field="mapping")
        if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
            raise BadRequest(
                "mapping.values must map our fields to {source_value: our_value}", field="mapping"
            )
        if not isinstance(defaults, dict):
            raise BadRequest("mapping.defaults must be an object", field="mapping")
        source_id = document.get("source_id")
        geometry = document.get("geometry")
        for name, value in (("source_id", source_id), ("geometry", geometry)):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"mapping.{name} must be a column name", field="mapping")
        return cls(
            fields={k: v for k, v in fields.items() if v is not None},
            values={k: {str(a): b for a, b in v.items()} for k, v in values.items()},
            defaults=dict(defaults),
            source_id=source_id,
            geometry=geometry,
            households=households,
            repeat=repeat if isinstance(repeat, str) else None,
        )

    def resolve(
        self,
        collection: Collection,
        columns: list[str],
        *,
        fixed: dict[str, Any] | None = None,
        shapefile: bool = False,
    ) -> Plan:
        """The plan for a file with ``columns``: explicit fields first, then guesses.

        ``fixed`` gives values that hold for every feature (``--settlement``);
        ``shapefile`` allows guessing from names cut to 10 characters.
        """
        writable = {p.name: p for p in collection.properties if p.writable}
        for part, names in (
            ("fields", self.fields),
            ("values", self.values),
            ("defaults", self.defaults),
        ):
            wrong = sorted(set(names) - set(writable))
            if wrong:
                raise BadRequest(
                    f"mapping.{part} names {', '.join(wrong)}, not field(s) of "
                    f"{collection.name}; its fields: {', '.join(writable)}",
                    field="mapping",
                )
        missing = sorted({c for c in self.fields.values() if c not in columns})
        if self.source_id is not None and self.source_id not in columns:
            missing.append(self.source_id)
        if missing:
            raise BadRequest(
                f"mapping names column(s) {', '.join(missing)} that the file does not have; "
                f"its columns: {', '.join(columns) or 'none'}",
                field="mapping",
            )
        chosen: dict[str, str] = dict(self.fields)
        guessed: list[str] = []
        used = set(chosen.values())
        by_fold: dict[str, str] = {}
        for column in columns:  # a form's group prefix (``structure-use``) counts last
            by_fold.setdefault(_name_key(column.rsplit("-", 1)[-1]), column)
        by_fold.update({_name_key(c): c for c in columns})
        for name in writable:
            if name in chosen or (fixed and name in fixed):
                continue
            guess = _guess(name, by_fold, used, shapefile=shapefile)
            if guess is not None:
                chosen[name] = guess
                used.add(guess)
                guessed.append(name)
        return Plan(
            collection=collection,
            properties=tuple(writable.values()),
            columns=chosen,
            guessed=guessed,
            values=self.values,
            defaults=self.defaults,
            fixed=dict(fixed or {}),
            source_id=self.source_id,
        )


def _name_key(name: str) -> str:
    """A column name compared loosely: any case, separators as ``_``."""
    return re.sub(r"[\s\-./:]+", "_", name.strip()).casefold()


def _guess(name: str, by_fold: dict[str, str], used: set[str], *, shapefile: bool) -> str | None:
    candidates = [name, *SYNONYMS.get(name, ())]
    for candidate in candidates:
        column = by_fold.get(_name_key(candidate))
        if column is not None and column not in used:
            return column
    if shapefile and len(name) > SHAPEFILE_NAME:
        # Makazi's own Shapefile names (struct_no, wall_mat...), then GDAL's cut ones
        for short in (SHORT_NAMES.get(name), name[:SHAPEFILE_NAME]):
            column = by_fold.get(_name_key(short)) if short else None
            if column is not None and column not in used:
                return column
    return None


@dataclass(frozen=True)
class Plan:
    """A mapping resolved against one file's columns: what each field is read from."""

    collection: Collection
    properties: tuple[Property, ...]
    columns: dict[str, str]
    guessed: list[str]
    values: dict[str, dict[str, Any]]
    defaults: dict[str, Any]
    fixed: dict[str, Any]
    source_id: str | None

    def describe(self) -> dict[str, Any]:
        """The mapping as used (explicit and guessed), for a dry run's report."""
        return {
            "fields": dict(self.columns),
            "guessed": list(self.guessed),
            "values": self.values,
            "defaults": {**self.defaults, **self.fixed},
            "unmapped": [p.name for p in self.properties if p.name not in self.columns],
        }

    def apply(self, row: dict[str, Any]) -> dict[str, str | None]:
        """Our fields' values for one source row, as text (``None`` for no value).

        Checks (types, enums, lengths) happen later, in SQL, over the whole file.
        """
        out: dict[str, str | None] = {}
        for prop in self.properties:
            name = prop.name
            if name in self.fixed:
                out[name] = text_value(self.fixed[name])
                continue
            column = self.columns.get(name)
            raw = row.get(column) if column is not None else None
            if prop.kind == "string-array":
                out[name] = text_list(raw, self.defaults.get(name, prop.default))
                continue
            value = text_value(raw)
            table = self.values.get(name)
            if table is not None and value is not None:
                if value in table:
                    value = text_value(table[value])
                elif (folded := _lookup_folded(table, value)) is not None:
                    value = text_value(folded)
                elif "*" in table:
                    value = text_value(table["*"])
            if value is not None and prop.enum is not None and value not in prop.enum:
                key = _enum_key(value)
                value = next((e for e in prop.enum if e == key), value)
            if value is None:
                default = self.defaults.get(name, prop.default)
                if isinstance(default, list | tuple):
                    default = ";".join(str(v) for v in default) if default else None
                value = text_value(default)
            out[name] = value
        return out


def text_list(value: Any, default: Any = None) -> str | None:
    """A list field as the JSON array the stage takes (``None`` for no value).

    A source gives a list as a list (GeoJSON, read by GDAL), as the JSON array an
    export writes (``["Kibra", "Kibera"]``), or as text separated by semicolons.

    >>> text_list('["a; b", "c"]'), text_list("a ; b"), text_list(" "), text_list(None, ("x",))
    ('["a; b", "c"]', '["a", "b"]', None, '["x"]')
    """
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("["):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, str):
        value = value.split(";")
    items = [text for text in (text_value(v) for v in value or ()) if text is not None]
    if not items and default:
        return text_list(default)
    return json.dumps(items, ensure_ascii=False) if items else None


def _lookup_folded(table: dict[str, Any], value: str) -> Any:
    folded = value.casefold()
    for key, target in table.items():
        if key != "*" and key.casefold() == folded:
            return target
    return None
