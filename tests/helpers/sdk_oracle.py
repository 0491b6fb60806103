"""An oracle nobody here wrote: the official SDK's models of mongoClusters (azure-mgmt-mongocluster 1.2.0).

The SDK is generated from the REST spec (Azure/azure-rest-api-specs, specification/mongocluster, api
2026-06-01). A body passes when it loads into the model, every field at every level is one the model knows
(`unknown_fields` is empty), and it serializes back unchanged. A dev dependency only: the app never imports it.
"""

from __future__ import annotations

import json
from typing import Any

from azure.mgmt.mongocluster import models
from azure.mgmt.mongocluster._utils.model_base import Model  # the generated models' base class

from tests.helpers.paths import CONTRACT


def unknown_fields(model: Model, path: str = "$") -> list[str]:
    """Every key of ``model`` (recursively) that is not a field of its generated model class."""
    fields = model._attr_to_rest_field
    known = {rf._rest_name for rf in fields.values()}
    out = [f"{path}.{key}" for key in model if key not in known]
    for attr, rf in fields.items():
        name = rf._rest_name
        if name in model:
            out.extend(_walk(getattr(model, attr), f"{path}.{name}"))
    return out


def _walk(value: Any, path: str) -> list[str]:
    if isinstance(value, Model):
        return unknown_fields(value, path)
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _walk(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _walk(item, f"{path}[{key!r}]")]
    return []


def check_round_trip(body: dict[str, Any], model_type: type[Model]) -> Model:
    """Load ``body`` into ``model_type``; assert no unknown field and an unchanged round trip."""
    model = model_type(body)
    unknown = unknown_fields(model)
    assert unknown == [], f"fields the {model_type.__name__} model does not know: {unknown}"
    assert json.loads(json.dumps(model.as_dict())) == body
    return model


def as_cluster(body: dict[str, Any]) -> models.MongoCluster:
    """A GET/PUT/list item body as the SDK's ``MongoCluster`` (checked)."""
    model = check_round_trip(body, models.MongoCluster)
    assert isinstance(model, models.MongoCluster)
    return model


def as_update(body: dict[str, Any]) -> models.MongoClusterUpdate:
    """A PATCH body as the SDK's ``MongoClusterUpdate`` (checked)."""
    model = check_round_trip(body, models.MongoClusterUpdate)
    assert isinstance(model, models.MongoClusterUpdate)
    return model


def contract(name: str) -> dict[str, Any]:
    """A fixture of ``tests/contract/`` (each names the published example it follows in ``source``)."""
    doc = json.loads((CONTRACT / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def shape(value: Any, path: str = "$") -> set[str]:
    """The paths of a JSON document (map keys of ids and tags collapsed to ``*``), for shape comparisons."""
    out = {path}
    if isinstance(value, dict):
        collapse = path.endswith((".tags", ".userAssignedIdentities"))
        for key, item in value.items():
            out |= shape(item, f"{path}.{'*' if collapse else key}")
    elif isinstance(value, list):
        for item in value:
            out |= shape(item, f"{path}[]")
    return out
