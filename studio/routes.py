"""The checkpoint download route: the archive streamed from disk (never read into memory).

``/grasprune-download/<run id>`` serves the checkpoint as is (``/grasprune-download/heal/<job id>`` a
healed one), ``?precision=bf16`` (``fp16``, ``fp32``) its
archive in that precision, ``?precision=gguf-f16`` (``gguf-q8_0``, ...) its GGUF export; any other
precision is refused (400).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from grasprune.errors import UserError
from grasprune.runs.archive import GGUF_KEYS, served_archive, served_source_archive
from grasprune.runs.store import runs_root
from grasprune.serving.convert import PRECISIONS

DOWNLOAD_PREFIX = "/grasprune-download"


def download_url(run_id: str, precision: str | None = None, heal: bool = False) -> str:
    """A run's archive, or with ``heal`` a heal job's (``/grasprune-download/heal/<job id>``)."""
    return f"{DOWNLOAD_PREFIX}/{'heal/' if heal else ''}{run_id}" + (f"?precision={precision}" if precision else "")


async def download(request: Request) -> Response:
    asked = request.query_params.getlist("precision")
    known = (*PRECISIONS, *GGUF_KEYS)
    if len(asked) > 1 or (asked and asked[0] not in known):
        return PlainTextResponse(f"unknown precision {asked[-1][:20]!r}: ask for one of {', '.join(known)}",
                                 status_code=400)
    try:
        if "job_id" in request.path_params:
            from studio.heal_jobs import heal_job_in_root

            source = heal_job_in_root(request.path_params["job_id"], runs_root())
            info = served_source_archive(source, runs_root(), asked[0] if asked else None)
        else:
            info = served_archive(runs_root(), request.path_params["run_id"], asked[0] if asked else None)
    except UserError as err:
        return PlainTextResponse(str(err), status_code=404)
    return FileResponse(info.path, media_type="application/x-tar", filename=info.download_name(),
                        headers={"X-Checksum-Sha256": info.sha256})


def routes() -> list[Route]:
    return [Route(DOWNLOAD_PREFIX + "/heal/{job_id}", download, methods=["GET", "HEAD"]),
            Route(DOWNLOAD_PREFIX + "/{run_id}", download, methods=["GET", "HEAD"])]
