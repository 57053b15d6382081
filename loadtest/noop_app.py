"""The ceilings: a Serve app that answers every POST with 202, and every gRPC
``weather.v1.Publisher/Publish`` with an id, and does nothing else.

Deployed by the benchmark as an extra application (route prefix ``/noop``, gRPC metadata
``application: noop``) next to the pipeline, in the same Ray cluster (same RAY_SERVE_*
flags, same proxies), so the load against it is what Serve's HTTP and gRPC paths alone can
do on this machine.
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from serve_app.pb.weather.v1 import weather_pb2

_BODY = b'{"accepted":1}'


@serve.deployment
class Noop:
    async def __call__(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(status_code=405, headers={"Allow": "POST"})
        await request.body()  # receive it, as the ingress must; then ignore it
        return Response(_BODY, status_code=202, media_type="application/json")

    async def Publish(  # noqa: N802 - gRPC method name
        self, request: weather_pb2.Tweet, grpc_context: object
    ) -> weather_pb2.PublishResponse:
        return weather_pb2.PublishResponse(id="noop")


app = Noop.bind()
