"""Lambda events in the shapes AWS documents, carrying a webhook (or a schedule).

Each follows the example payload of its AWS documentation page, field for field, with only
the request itself (path, headers, body) set by the test:

- Function URL: https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html
  ("Request payload format", payload format version 2.0);
- API Gateway HTTP API, payload 2.0:
  https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html
- API Gateway REST API (Lambda proxy integration, payload 1.0):
  https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-lambda-proxy-integrations.html
- EventBridge scheduled event ("source": "aws.events", "detail-type": "Scheduled Event"):
  https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-run-lambda-schedule.html
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

ACCOUNT = "123456789012"
URL_ID = "abcdefghijklmnopqrstuvwxyz012345"


def _body(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def signature(body: bytes, secret: str) -> str:
    """The ``X-BFL-Signature`` the receiver accepts: an HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def function_url(
    payload: Any,
    headers: dict[str, str],
    *,
    path: str = "/webhooks/bfl",
    query: str = "",
    base64_body: bool = False,
) -> dict[str, Any]:
    """A Function URL invocation (payload 2.0; ``routeKey`` and ``stage`` are ``$default``)."""
    body = _body(payload)
    host = f"{URL_ID}.lambda-url.us-west-2.on.aws"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "host": host,
            "x-amzn-trace-id": "Root=1-5e723bd1-b30e77a6d1e9d3e48b3cdd01",
            "x-forwarded-for": "123.123.123.123",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            "user-agent": "bfl-webhooks",
            **headers,
        },
        "queryStringParameters": dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        or None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_ID,
            "domainName": host,
            "domainPrefix": URL_ID,
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "123.123.123.123",
                "userAgent": "bfl-webhooks",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000",
            "timeEpoch": 1583348638390,
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def http_api(payload: Any, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
    """An API Gateway HTTP API invocation (payload 2.0) on the ``$default`` stage."""
    event = function_url(payload, headers, **kw)
    domain = "id.execute-api.us-east-1.amazonaws.com"
    event["routeKey"] = "POST /webhooks/bfl"
    event["headers"]["host"] = domain
    event["requestContext"].update(
        {
            "accountId": ACCOUNT,
            "apiId": "api-id",
            "domainName": domain,
            "domainPrefix": "id",
            "routeKey": "POST /webhooks/bfl",
        }
    )
    event["pathParameters"] = None
    event["stageVariables"] = None
    return event


def rest_api(
    payload: Any, headers: dict[str, str], *, path: str = "/webhooks/bfl", base64_body: bool = False
) -> dict[str, Any]:
    """An API Gateway REST API Lambda proxy invocation (payload 1.0), resource ``/{proxy+}``."""
    body = _body(payload)
    all_headers = {
        "Content-Type": "application/json",
        "Host": "1234567890.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "bfl-webhooks",
        "X-Amzn-Trace-Id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **headers,
    }
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "1234567890",
            "domainName": "1234567890.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "1234567890",
            "extendedRequestId": "BQGojGkBoAMFZxw=",
            "httpMethod": "POST",
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": "127.0.0.1",
                "user": None,
                "userAgent": "bfl-webhooks",
                "userArn": None,
            },
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "09/Apr/2015:12:34:56 +0000",
            "requestTimeEpoch": 1428582896000,
            "resourceId": "123456",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "isBase64Encoded": base64_body,
    }


def scheduled() -> dict[str, Any]:
    """An EventBridge scheduled rule's event."""
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2015-10-08T16:53:06Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/bfl-hooks-drain"],
        "detail": {},
    }


def sqs() -> dict[str, Any]:
    """An SQS batch (not a trigger this function takes)."""
    return {
        "Records": [
            {
                "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
                "body": "test",
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "098f6bcd4621d373cade4e832627b4f6",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:us-east-1:{ACCOUNT}:my-queue",
                "awsRegion": "us-east-1",
            }
        ]
    }
