"""A query's answer of bytes (an Arrow IPC stream, CSV or Parquet) as an HTTP response, with
bounded memory: the query service answers `/internal/user-query` and `/v1/task/query` with it,
the user API forwards it as `POST /v1/query`'s answer.

The first `WINDOW_BYTES` are held back. An answer that ends within them goes out whole, with
its length and `X-Trace-Truncated: true|false` (rows left out past a `limit` or
TRACE_QUERY_MAX_EXPORT_ROWS), and an error before its end is answered with its status, as
today. A larger answer streams (chunked, `X-Trace-Truncated: unknown`: the head goes out before
its end is known) chunk by chunk as its executor writes it, never held whole: it holds at most
the `limit` asked for; if it reaches TRACE_QUERY_MAX_EXPORT_ROWS with rows left, or fails
part-way, its body is aborted (`AnswerCut`): no terminating chunk, the connection closed, so
no client takes it for complete (httpx raises RemoteProtocolError, curl exits 18, aiohttp
raises ClientPayloadError; a cut Arrow stream lacks its end-of-stream marker, a cut Parquet
file its footer).

Until its answer starts, a query is watched for its caller going away (`unless_gone`): a
closed connection cancels it — the user API's call of the query service is closed, which
the query service sees in turn and kills the executor running it — instead of running on to
its time limit for nobody (a console's Cancel, a notebook's interrupt). Once the body
streams, Starlette's StreamingResponse stops it the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from trace_platform.domain.query_formats import MEDIA_TYPES, TRUNCATED_HEADER, AnswerCut
from trace_platform.logs import get_logger

log = get_logger(__name__)
WINDOW_BYTES = 4 * 1024 * 1024
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it


async def unless_gone(request: Request, work: Awaitable[Response]) -> Response:
    """`work`'s response, or — when the caller closes its connection first — `work`
    cancelled (what it holds is released by its own cleanup) and a 499 nobody reads. The
    request's body must have been read already (FastAPI's body parameters have)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled itself: so is its work
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    log.info("query.client_gone", path=request.url.path)
    return Response(status_code=CLIENT_GONE)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the ASGI server's `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def bytes_answer(
    chunks: AsyncIterator[bytes],
    fmt: str,
    truncated: Callable[[], bool],
    close: Callable[[], Awaitable[None]],
) -> Response:
    """The response for an answer's `chunks` (see module). `truncated()`: whether rows were
    left out, asked once they have all been read; `close()`: releases what the chunks come
    from, called once whatever happens (after the body is sent, or when it is not)."""
    held: list[bytes] = []
    size = 0
    whole = False
    try:
        while size <= WINDOW_BYTES:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                whole, cut = True, truncated()
                break
            except AnswerCut as exc:  # cut, but small enough to be sent whole and say so
                held.append(exc.rest)
                whole, cut = True, True
                break
            held.append(chunk)
            size += len(chunk)
    except BaseException:
        await close()
        raise
    if whole:
        await close()
        return Response(
            b"".join(held),
            media_type=MEDIA_TYPES[fmt],
            headers={TRUNCATED_HEADER: "true" if cut else "false"},
        )

    async def body() -> AsyncIterator[bytes]:
        try:
            while held:
                yield held.pop(0)
            async for chunk in chunks:
                yield chunk
        except AnswerCut as exc:
            log.warning("query.answer_cut", reason=exc.detail)
            raise BodyAborted from None
        finally:
            await close()

    quiet_answer_cuts()
    return StreamingResponse(
        body(), media_type=MEDIA_TYPES[fmt], headers={TRUNCATED_HEADER: "unknown"}
    )


class BodyAborted(BaseException):
    """Ends the ASGI app in the middle of a body, so the server closes the connection
    without the terminating chunk. Not an Exception: no error handler answers it (there is
    nothing left to answer), it reaches uvicorn, which closes the connection."""


class _QuietCuts(logging.Filter):
    """uvicorn logs what ends a started response with its traceback: an answer cut on
    purpose (`BodyAborted`, logged as `query.answer_cut`) is not such an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        for _ in range(8):  # through groups (anyio's task groups) and chained causes
            if exc is None or isinstance(exc, BodyAborted):
                break
            if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            else:
                exc = exc.__cause__ or exc.__context__
        return not isinstance(exc, BodyAborted)


def quiet_answer_cuts() -> None:
    """Install the filter (once per process) on uvicorn's error log."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCuts) for f in logger.filters):
        logger.addFilter(_QuietCuts())
