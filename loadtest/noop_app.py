"""The ceiling: a Serve app that answers every POST with 202 and does nothing else.

Deployed by the benchmark as an extra application (route prefix ``/noop``) next to the
pipeline, in the same Ray cluster (same RAY_SERVE_* flags, same proxy), so the wrk
figure against it is what Serve's HTTP path alone can do on this machine.
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

_BODY = b'{"accepted":1}'


@serve.deployment
class Noop:
    async def __call__(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "POST"})
        await request.body()  # receive it, as the ingress must; then ignore it
        return Response(_BODY, status_code=202, media_type="application/json")


app = Noop.bind()
