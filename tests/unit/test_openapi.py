"""Each service's OpenAPI document lists what its routes really answer: /metrics as text, the
400/413/422 of every operation with a body (422 with our `errors`), 401/403 and the bearer
scheme on admin operations, and a body for every 4xx."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest

os.environ.update({"BROKER": "kafka", "DATA_DIR": tempfile.mkdtemp(prefix="sb-unit-"), "CHANNEL_NAMESPACE": ""})

from services import inventory, notification, order, payment
from services.runtime import ADMIN_SCHEME

SERVICES = {"order": order, "inventory": inventory, "payment": payment, "notification": notification}
ADMIN_OPERATIONS = {("inventory", "put", "/inventory/{product_id}"), ("notification", "get", "/dead-letters")}
BODY_OPERATIONS = {("order", "post", "/orders"), ("inventory", "put", "/inventory/{product_id}")}


def ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items() for method, op in item.items()]


@pytest.fixture(params=list(SERVICES))
def spec(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name = request.param
    return name, SERVICES[name].service.api.openapi()


def test_metrics_are_documented_as_prometheus_text(spec: tuple[str, dict[str, Any]]) -> None:
    _, doc = spec
    answer = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    assert set(answer["content"]) == {"text/plain"}


def test_ready_documents_its_503(spec: tuple[str, dict[str, Any]]) -> None:
    _, doc = spec
    assert "503" in doc["paths"]["/ready"]["get"]["responses"]


def test_operations_with_a_body_list_400_413_and_our_422(spec: tuple[str, dict[str, Any]]) -> None:
    name, doc = spec
    with_body = {(name, method, path) for method, path, op in operations(doc) if "requestBody" in op}
    assert with_body == {o for o in BODY_OPERATIONS if o[0] == name}
    for method, path, op in operations(doc):
        if "requestBody" not in op:
            continue
        responses = op["responses"]
        assert responses["400"]["content"] == ref("ErrorBody"), (method, path)
        assert responses["413"]["content"] == ref("ErrorBody"), (method, path)
        assert responses["422"]["content"] == ref("ValidationErrorBody"), (method, path)


def test_every_422_is_our_body_with_errors(spec: tuple[str, dict[str, Any]]) -> None:
    _, doc = spec
    schemas = doc["components"]["schemas"]
    for method, path, op in operations(doc):
        if "422" in op["responses"]:
            assert op["responses"]["422"]["content"] == ref("ValidationErrorBody"), (method, path)
    assert "HTTPValidationError" not in schemas
    assert {"detail", "errors"} <= set(schemas["ValidationErrorBody"]["properties"])
    assert set(schemas["FieldError"]["properties"]) == {"field", "message", "type"}


def test_admin_operations_declare_the_bearer_scheme_and_401_403(spec: tuple[str, dict[str, Any]]) -> None:
    name, doc = spec
    for method, path, op in operations(doc):
        responses = op["responses"]
        if (name, method, path) in ADMIN_OPERATIONS:
            assert op["security"] == [{ADMIN_SCHEME: []}], (method, path)
            assert responses["401"]["content"] == ref("ErrorBody")
            assert "WWW-Authenticate" in responses["401"]["headers"]
            assert responses["403"]["content"] == ref("ErrorBody")
        else:
            assert "security" not in op, (method, path)
            assert not {"401", "403"} & set(responses), (method, path)
    if any(o[0] == name for o in ADMIN_OPERATIONS):
        assert doc["components"]["securitySchemes"][ADMIN_SCHEME] == {
            "type": "http",
            "scheme": "bearer",
            "description": doc["components"]["securitySchemes"][ADMIN_SCHEME]["description"],
        }


def test_every_4xx_has_a_body(spec: tuple[str, dict[str, Any]]) -> None:
    _, doc = spec
    for method, path, op in operations(doc):
        for code, answer in op["responses"].items():
            if code.startswith("4"):
                assert answer.get("content"), (method, path, code)


def test_the_order_body_admits_each_shape_the_route_accepts() -> None:
    """`items` of item objects or product ids (quantity 1), or the seed's flat `productId` and
    `quantity` without `items`: a body of either shape gets 202, so the document admits both."""
    schemas = order.service.api.openapi()["components"]["schemas"]
    listed, flat = schemas["PlaceOrder"]["anyOf"]
    assert listed["required"] == ["items"]
    assert listed["properties"]["items"]["items"]["anyOf"] == [
        {"$ref": "#/components/schemas/OrderItem"},
        schemas["OrderItem"]["properties"]["productId"],
    ]
    assert (flat["required"], flat["not"]) == (["productId", "quantity"], {"required": ["items"]})
    assert flat["properties"]["productId"] == schemas["OrderItem"]["properties"]["productId"]
    assert flat["properties"]["quantity"] == schemas["OrderItem"]["properties"]["quantity"]
    for shape in (listed, flat):
        assert {"orderId", "userId"} <= set(shape["properties"])
