"""The checkpoint download route: the archive streamed from disk (never read into memory).

``/grasprune-download/<run id>`` serves the checkpoint as is, ``?precision=bf16`` (``fp16``, ``fp32``) its
archive in that precision, ``?precision=gguf-f16`` (``gguf-q8_0``, ...) its GGUF export; any other
precision is refused (400).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from grasprune.errors import UserError
from grasprune.runs.archive import GGUF_KEYS, served_archive
from grasprune.runs.store import runs_root
from grasprune.serving.convert import PRECISIONS

DOWNLOAD_PREFIX = "/grasprune-download"


def download_url(run_id: str, precision: str | None = None) -> str:
    return f"{DOWNLOAD_PREFIX}/{run_id}" + (f"?precision={precision}" if precision else "")


async def download(request: Request) -> Response:
    asked = request.query_params.getlist("precision")
    known = (*PRECISIONS, *GGUF_KEYS)
    if len(asked) > 1 or (asked and asked[0] not in known):
        return PlainTextResponse(f"unknown precision {asked[-1][:20]!r}: ask for one of {', '.join(known)}",
                                 status_code=400)
    try:
        info = served_archive(runs_root(), request.path_params["run_id"], asked[0] if asked else None)
    except UserError as err:
        return PlainTextResponse(str(err), status_code=404)
    return FileResponse(info.path, media_type="application/x-tar", filename=info.download_name(),
                        headers={"X-Checksum-Sha256": info.sha256})


def routes() -> list[Route]:
    return [Route(DOWNLOAD_PREFIX + "/{run_id}", download, methods=["GET", "HEAD"])]
