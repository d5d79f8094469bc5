"""The checkpoint download route: the archive streamed from disk (never read into memory)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from grasprune.archive import served_archive
from grasprune.errors import UserError
from grasprune.runs import runs_root

DOWNLOAD_PREFIX = "/grasprune-download"


def download_url(run_id: str) -> str:
    return f"{DOWNLOAD_PREFIX}/{run_id}"


async def download(request: Request) -> Response:
    try:
        info = served_archive(runs_root(), request.path_params["run_id"])
    except UserError as err:
        return PlainTextResponse(str(err), status_code=404)
    return FileResponse(info.path, media_type="application/x-tar", filename=info.download_name(),
                        headers={"X-Checksum-Sha256": info.sha256})


def routes() -> list[Route]:
    return [Route(DOWNLOAD_PREFIX + "/{run_id}", download, methods=["GET", "HEAD"])]
