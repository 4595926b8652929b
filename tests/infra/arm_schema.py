"""Check Bicep resource bodies against the models Azure's own SDKs generate from the REST specs.

Each ``azure-mgmt-*`` package is generated from the OpenAPI specs of its resource provider:
its msrest models carry, per class, ``_attribute_map`` (attribute -> JSON path and type,
flattened ``properties.x`` paths included), ``_validation`` (read-only and required
attributes), ``_subtype_map`` (discriminated types: which subclass a discriminator value
selects) and, in ``__init__``'s annotations, the enum each string attribute takes. That is
the schema this module walks a parsed Bicep body (pycep's dicts) against.

What it reports, as a list of ``Problem``:
- a property path the model does not have (a typo, a property of another API version);
- a property the model marks read-only (ARM ignores or rejects it);
- a literal of the wrong JSON type (a string where a bool or an int goes);
- a string literal outside the enum of its property (case-insensitive, as ARM compares);
- a discriminator value no subtype answers to (an ``endpointType`` that does not exist).

Expressions cannot be checked before deployment: a reference to a parameter, a resource
property, a loop variable, or a function other than ``concat``/``union``, passes. A variable
is resolved to its declared value; both branches of ``cond ? a : b`` are checked.
"""

from __future__ import annotations

import enum
import importlib
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: Keys of a Bicep resource body that are Bicep's, not ARM's body.
BICEP_ONLY_KEYS = frozenset({"name", "parent", "scope", "dependsOn"})

#: The msrest primitive types and the Python types a literal of that type may have.
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "decimal": (int, float),
    "object": (str, bool, int, float, dict, list),
    "iso-8601": (str,),
    "rfc-1123": (str,),
    "duration": (str,),
    "date": (str,),
    "time": (str,),
    "unix-time": (int,),
    "bytearray": (str,),
    "base64": (str,),
}

_MODEL_REFERENCE = re.compile(r"_models\.(\w+)")


@dataclass(frozen=True)
class ModelRef:
    """Where the model of one resource type and API version lives.

    ``operations`` names, for a package that targets one API version per operation group
    (no ``vYYYY_MM_DD`` subpackage), the operations module whose default api-version must be
    the template's: proof that the model is the right version.
    """

    module: str
    model: str
    operations: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing in a body that the model does not allow."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Field:
    """One JSON property of a model: its msrest type string and the enum it takes, if any."""

    kind: str
    attribute: str
    owner: type
    read_only: bool
    enum_values: frozenset[str] | None


def load_model(ref: ModelRef) -> tuple[type, ModuleType]:
    """The model class and its models module."""
    module = importlib.import_module(ref.module)
    model: type = getattr(module, ref.model)
    return model, module


def operations_api_version(ref: ModelRef) -> set[str]:
    """The api-versions the operations module of ``ref`` defaults to (empty when none)."""
    if ref.operations is None:
        return set()
    module = importlib.import_module(ref.operations)
    source = module.__loader__.get_source(module.__name__)  # type: ignore[union-attr]
    return set(re.findall(r'"api-version", "([0-9a-z-]+)"', source or ""))


def _enum_of(owner: type, attribute: str, models: ModuleType) -> frozenset[str] | None:
    """Lower-cased values of the enum ``owner.__init__`` annotates ``attribute`` with."""
    annotation = owner.__init__.__annotations__.get(attribute)  # type: ignore[misc]
    if annotation is None:
        return None
    for name in _MODEL_REFERENCE.findall(str(annotation)):
        candidate = getattr(models, name, None)
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return frozenset(str(member.value).lower() for member in candidate)
    return None


def _expression(value: Any, kind: str) -> dict[str, Any] | None:
    """pycep's node for an operator or function call (``{"operator": {...}}``); None for a
    literal object, even one with a property named ``operator`` (alert criteria have one)."""
    if isinstance(value, dict) and len(value) == 1 and isinstance(value.get(kind), dict):
        node: dict[str, Any] = value[kind]
        return node if "type" in node else None
    return None


def _split_key(key: str) -> list[str]:
    """An msrest flattened key (``properties.siteConfig``) as its JSON path; ``\\.`` is a dot."""
    parts = re.split(r"(?<!\\)\.", key)
    return [part.replace("\\.", ".") for part in parts]


def field_tree(model: type, models: ModuleType) -> dict[str, Any]:
    """The model's JSON shape: nested dicts of path segments ending in ``Field`` leaves."""
    validation: dict[str, dict[str, Any]] = getattr(model, "_validation", {})
    tree: dict[str, Any] = {}
    for attribute, spec in model._attribute_map.items():  # type: ignore[attr-defined]
        parts = _split_key(spec["key"])
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = Field(
            kind=spec["type"],
            attribute=attribute,
            owner=model,
            read_only=bool(validation.get(attribute, {}).get("readonly")),
            enum_values=_enum_of(model, attribute, models),
        )
    return tree


class Validator:
    """Walks one template's resource bodies against model classes."""

    def __init__(self, template: dict[str, Any], models: ModuleType) -> None:
        self.template = template
        self.models = models
        self.symbols = self._symbols(template)

    @staticmethod
    def _symbols(template: dict[str, Any]) -> set[str]:
        """Names that stand for a runtime value: parameters, variables, resources, modules."""
        names: set[str] = set()
        for kind in ("parameters", "variables", "resources", "modules"):
            names |= set(template.get(kind, {}))
        return names

    def is_expression(self, value: Any, loop_variables: frozenset[str]) -> bool:
        """True when ``value`` is evaluated at deployment (it cannot be checked here)."""
        if _expression(value, "operator") or _expression(value, "function"):
            return True
        if isinstance(value, str):
            head = value.split(".", 1)[0]
            return value in self.symbols or head in loop_variables or "${" in value
        return False

    def check_body(
        self, body: dict[str, Any], model: type, loop_variables: frozenset[str] = frozenset()
    ) -> list[Problem]:
        """Every problem in a resource body (Bicep-only keys dropped) against ``model``."""
        arm_body = {key: value for key, value in body.items() if key not in BICEP_ONLY_KEYS}
        return self._check_object(arm_body, model, "", loop_variables)

    def _check_object(
        self, value: dict[str, Any], model: type, path: str, loops: frozenset[str]
    ) -> list[Problem]:
        selected = self._subtype(value, model, path, loops)
        if isinstance(selected, Problem):
            return [selected]
        return self._check_tree(value, field_tree(selected, self.models), path, loops)

    def _subtype(
        self, value: dict[str, Any], model: type, path: str, loops: frozenset[str]
    ) -> type | Problem:
        """The subclass a discriminator in ``value`` selects; ``model`` when it has none."""
        subtypes: dict[str, dict[str, str]] = getattr(model, "_subtype_map", None) or {}
        for attribute, by_value in subtypes.items():
            key = model._attribute_map[attribute]["key"]  # type: ignore[attr-defined]
            discriminator = value.get(key)
            if discriminator is None or self.is_expression(discriminator, loops):
                continue
            name = by_value.get(str(discriminator))
            if name is None:
                return Problem(
                    f"{path}.{key}".lstrip("."),
                    f"{discriminator!r} is not a {model.__name__} type (one of {sorted(by_value)})",
                )
            sub: type = getattr(self.models, name)
            return self._subtype(value, sub, path, loops) if sub is not model else sub
        return model

    def _check_tree(
        self, value: dict[str, Any], tree: dict[str, Any], path: str, loops: frozenset[str]
    ) -> list[Problem]:
        problems: list[Problem] = []
        for key, item in value.items():
            here = f"{path}.{key}".lstrip(".")
            node = tree.get(key)
            if node is None:
                problems.append(Problem(here, f"no such property (known: {sorted(tree)})"))
            elif isinstance(node, Field):
                if node.read_only:
                    problems.append(Problem(here, "read-only property"))
                else:
                    problems += self._check_value(item, node, here, loops)
            else:
                problems += self._each_branch(item, here, loops, self._subtree_check(node, loops))
        return problems

    def _subtree_check(self, node: dict[str, Any], loops: frozenset[str]) -> Any:
        """A check of a nested JSON object (a flattened ``properties.x`` level) against ``node``."""

        def check(value: Any, path: str) -> list[Problem]:
            if not isinstance(value, dict):
                return [Problem(path, f"an object goes here, not {value!r}")]
            return self._check_tree(value, node, path, loops)

        return check

    def _each_branch(self, value: Any, path: str, loops: frozenset[str], check: Any) -> list[Any]:
        """Apply ``check`` to the literal(s) ``value`` may be: a resolved variable, both
        branches of a conditional, each argument of concat/union; nothing for other
        expressions."""
        if isinstance(value, str) and value in self.template.get("variables", {}):
            return self._each_branch(self.template["variables"][value]["value"], path, loops, check)
        if isinstance(value, dict) and "loop_type" in value and "config" in value:
            # A for-expression: a list of its body, evaluated per item of the loop.
            detail = value["loop_type"]["detail"]
            names = {detail.get("item_name"), detail.get("index_name")} - {None}
            self.symbols |= {str(name) for name in names}
            return self._each_branch([value["config"]], path, loops, check)
        operator = _expression(value, "operator")
        if operator is not None:
            if operator["type"] == "conditional":
                operands = operator["operands"]
                return self._each_branch(
                    operands["true_value"], path, loops, check
                ) + self._each_branch(operands["false_value"], path, loops, check)
            return []
        function = _expression(value, "function")
        if function is not None:
            if function["type"] in ("concat", "union"):
                found: list[Any] = []
                for argument in function["parameters"].values():
                    if argument is not None:
                        found += self._each_branch(argument, path, loops, check)
                return found
            return []
        if self.is_expression(value, loops):
            return []
        result: list[Any] = check(value, path)
        return result

    def _check_value(
        self, value: Any, field: Field, path: str, loops: frozenset[str]
    ) -> list[Problem]:
        kind = field.kind
        if kind.startswith("[") and kind.endswith("]"):
            element = Field(kind[1:-1], field.attribute, field.owner, False, field.enum_values)

            def each(items: Any, here: str) -> list[Problem]:
                if not isinstance(items, list):
                    return [Problem(here, f"a list goes here, not {items!r}")]
                found: list[Problem] = []
                for index, item in enumerate(items):
                    found += self._check_value(item, element, f"{here}[{index}]", loops)
                return found

            return self._each_branch(value, path, loops, each)
        if kind.startswith("{") and kind.endswith("}"):
            element = Field(kind[1:-1], field.attribute, field.owner, False, None)

            def entries(items: Any, here: str) -> list[Problem]:
                if not isinstance(items, dict):
                    return [Problem(here, f"a map goes here, not {items!r}")]
                found: list[Problem] = []
                for key, item in items.items():
                    found += self._check_value(item, element, f"{here}[{key}]", loops)
                return found

            return self._each_branch(value, path, loops, entries)
        if kind in PRIMITIVES:

            def literal(item: Any, here: str) -> list[Problem]:
                allowed = PRIMITIVES[kind]
                wrong_bool = isinstance(item, bool) and bool not in allowed
                if not isinstance(item, allowed) or wrong_bool:
                    return [Problem(here, f"{item!r} is not of type {kind}")]
                if (
                    field.enum_values is not None
                    and isinstance(item, str)
                    and item.lower() not in field.enum_values
                ):
                    return [Problem(here, f"{item!r} is not one of {sorted(field.enum_values)}")]
                return []

            return self._each_branch(value, path, loops, literal)
        model: type = getattr(self.models, kind)
        if isinstance(model, type) and issubclass(model, enum.Enum):
            values = frozenset(str(member.value).lower() for member in model)
            return self._check_value(
                value, Field("str", field.attribute, field.owner, False, values), path, loops
            )
        return self._each_branch(
            value,
            path,
            loops,
            lambda v, p: (
                self._check_object(v, model, p, loops)
                if isinstance(v, dict)
                else [Problem(p, f"a {kind} object goes here, not {v!r}")]
            ),
        )


#: The properties of ARM's common ``Resource`` definition (common-types v2), all read-only.
_COMMON_RESOURCE = ("id", "name", "type")
_SPEC_PRIMITIVES = {"boolean": "bool", "integer": "int", "number": "float", "object": "object"}


def _spec_kind(schema: dict[str, Any]) -> str:
    """The msrest type string of an OpenAPI property schema."""
    reference = schema.get("$ref")
    if isinstance(reference, str):
        return reference.rpartition("/")[2]
    kind = schema.get("type")
    if kind == "array":
        return f"[{_spec_kind(schema['items'])}]"
    if kind == "string":
        return "duration" if schema.get("format") == "duration" else "str"
    return _SPEC_PRIMITIVES[str(kind)]


def _no_annotations(self: object) -> None:
    """The ``__init__`` of a spec-built model: no annotation, so no enum (see _enum_of)."""


def models_from_spec(name: str, definitions: dict[str, Any]) -> ModuleType:
    """A models module built from a REST spec's ``definitions``, shaped as msrest's (for an
    API version no installed ``azure-mgmt-*`` package still generates): one class per
    definition with ``_attribute_map`` (``x-ms-client-flatten`` as ``properties.x`` keys)
    and ``_validation`` (read-only). Enums are not modelled: the spec gives none here."""
    module = ModuleType(name)
    for definition, schema in definitions.items():
        attribute_map: dict[str, dict[str, str]] = {}
        validation: dict[str, dict[str, bool]] = {}
        if any("common-types" in part.get("$ref", "") for part in schema.get("allOf", [])):
            for common in _COMMON_RESOURCE:
                attribute_map[common] = {"key": common, "type": "str"}
                validation[common] = {"readonly": True}
        for key, prop in schema.get("properties", {}).items():
            target = prop.get("$ref", "").rpartition("/")[2]
            if prop.get("x-ms-client-flatten") and target in definitions:
                for inner, inner_prop in definitions[target]["properties"].items():
                    attribute_map[f"{key}_{inner}"] = {
                        "key": f"{key}.{inner}",
                        "type": _spec_kind(inner_prop),
                    }
                continue
            kind = "object" if "common-types" in prop.get("$ref", "") else _spec_kind(prop)
            attribute_map[key] = {"key": key, "type": kind}
            if prop.get("readOnly"):
                validation[key] = {"readonly": True}
        namespace = {
            "_attribute_map": attribute_map,
            "_validation": validation,
            "__init__": _no_annotations,
        }
        model = type(definition, (), namespace)
        setattr(module, definition, model)
    return module
