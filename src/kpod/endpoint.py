"""A client for OpenAI-compatible endpoints (OpenAI, vLLM, SGLang, TGI, `transformers serve`), shared by
the teacher (chat completions) and server evaluation (text completions).

Built for a user who pays per token or waits per request:
- every answer is committed to a SQLite cache before it counts, so re-running the same command after
  Ctrl-C or kill -9 sends nothing already answered;
- retries live here only (the client's own are off): jittered exponential backoff on 429, 5xx,
  timeouts, dropped connections and malformed responses, honouring Retry-After; a permanent error
  (400, 401, 403, 404, 422) stops the run at once;
- concurrency, requests-per-minute and tokens-per-minute limits, an optional fixed pause, and a stall
  timeout for a server that accepts connections and never answers;
- a progress bar with tokens, cost, retries, waiting requests and the age of the oldest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from kpod.files import DataError

log = logging.getLogger(__name__)

PERMANENT_STATUS = {400, 401, 403, 404, 422}


class EndpointError(RuntimeError):
    """The requests cannot go on (permanent API error, stalled server); answered requests are kept."""


class ResponseCache:
    """Answered requests, committed one by one (WAL, synchronous=FULL), safe under kill -9."""

    def __init__(self, path: Path, what: str = "response cache", rerun: str = "rerun the command"):
        self.path, self.what, self.rerun = path, what, rerun
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL)"
            )
            self.db.execute("SELECT count(*) FROM responses").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def get(self, key: str) -> dict | None:
        try:
            row = self.db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None
        if row is None:
            return None
        try:
            response = json.loads(row[0])
        except (TypeError, ValueError):
            response = None
        if not isinstance(response, dict):
            raise DataError(
                f"{self.path}: row with key {key} is not a JSON object ({str(row[0])[:60]!r}); delete that row "
                f"(sqlite3 {self.path} \"DELETE FROM responses WHERE key = '{key}'\") and {self.rerun}: only it is "
                "requested again"
            )
        return response

    def put(self, key: str, response: dict) -> None:
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", (key, json.dumps(response), time.time())
            )
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> DataError:
        return DataError(
            f"{self.path}: damaged {self.what} ({exc}); move it away and {self.rerun} (the answers it held are "
            "then requested, and paid for, again)"
        )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class RateLimiter:
    """Sliding one-minute windows for requests and tokens."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.events: list[tuple[float, int]] = []
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.events = [(t, n) for t, n in self.events if now - t < 60.0]
                over_requests = self.rpm and len(self.events) + 1 > self.rpm
                over_tokens = self.tpm and sum(n for _, n in self.events) + tokens > self.tpm and self.events
                if not over_requests and not over_tokens:
                    self.events.append((now, tokens))
                    return
                await asyncio.sleep(max(0.01, 60.0 - (now - self.events[0][0])))


@dataclass(frozen=True)
class EndpointSettings:
    base_url: str
    api_key: str
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    batch_delay: float = 0.0
    max_retries: int = 8
    timeout: float = 60.0
    stall_timeout: float = 600.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    prices_per_1k: tuple[float, float] = (0.0, 0.0)  # USD per 1000 (prompt, completion) tokens


@dataclass
class EndpointStats:
    sent: int = 0
    retries: int = 0
    failures: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    errors: dict = field(default_factory=dict)


Send = Callable[[object], Awaitable[dict]]  # client -> {"text": ..., "usage": {...}}; ValueError if malformed


@dataclass(frozen=True)
class Request:
    key: str  # cache key (request_key)
    send: Send
    tokens: int  # what the request counts for the tokens-per-minute limit


@dataclass
class Outcome:
    answers: dict[int, dict]  # request index -> {"text", "usage", "latency_s"}
    stats: EndpointStats
    stop: EndpointError | None  # why the run stopped early, if it did


def request_key(*parts) -> str:
    """The cache key of a request: a digest of everything that decides its answer."""
    return hashlib.sha256(json.dumps(list(parts), sort_keys=True).encode()).hexdigest()


def chat(model: str, messages: list[dict], temperature: float, max_tokens: int, seed: int | None = None) -> Send:
    """A chat completion request."""

    async def send(client) -> dict:
        extra = {"seed": seed} if seed is not None else {}
        response = await client.chat.completions.create(
            model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, **extra
        )
        choice = response.choices[0] if response.choices else None
        return _answer(choice and choice.message.content, response.usage, choice)

    return send


def completion(model: str, prompt: str, max_tokens: int, stop: list[str]) -> Send:
    """A greedy text completion request (the legacy completions API: the prompt as it is, no chat template)."""

    async def send(client) -> dict:
        response = await client.completions.create(
            model=model, prompt=prompt, temperature=0.0, max_tokens=max_tokens, stop=stop or None
        )
        choice = response.choices[0] if response.choices else None
        return _answer(choice and choice.text, response.usage, choice)

    return send


def _answer(text: str | None, usage, choice) -> dict:
    """The answer's text and usage. An answer without text (no choices, or content null: a content filter)
    is an answer all the same, paid for and cached: sending it again would pay again for the same refusal.
    Its `no_text` says why; callers leave it out."""
    answer = {
        "text": text,
        "usage": {
            "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        },
    }
    if text is None:
        reason = getattr(choice, "finish_reason", None) if choice is not None else None
        answer["no_text"] = "no choices" if choice is None else f"content null (finish_reason {reason})"
    return answer


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Endpoint:
    def __init__(self, settings: EndpointSettings, cache: ResponseCache):
        from openai import AsyncOpenAI, Timeout

        self.settings = s = settings
        self.client = AsyncOpenAI(
            api_key=s.api_key,
            base_url=s.base_url,
            max_retries=0,
            timeout=Timeout(s.timeout, connect=min(10.0, s.timeout)),
        )
        self.cache = cache
        self.limiter = RateLimiter(s.requests_per_minute, s.tokens_per_minute)
        self.semaphore = asyncio.Semaphore(s.concurrency)
        self.last_answer = time.monotonic()
        self.waiting: dict[int, float] = {}  # ticket -> when it was sent
        self.stats = EndpointStats()
        self.stop: EndpointError | None = None

    async def answer(self, request: Request) -> dict | None:
        """The answer to one request (from the cache or the endpoint), or None after the retries ran out."""
        from openai import APIConnectionError, APIResponseValidationError, APIStatusError, APITimeoutError

        cached = self.cache.get(request.key)
        if cached is not None:
            self.stats.cached += 1
            return cached
        s, attempt = self.settings, 0
        while True:
            async with self.semaphore:
                if self.stop:  # a permanent error elsewhere: send nothing more
                    return None
                if s.batch_delay:
                    await asyncio.sleep(s.batch_delay)
                await self.limiter.acquire(request.tokens)
                started = time.monotonic()
                ticket = self.stats.sent
                self.waiting[ticket] = started
                try:
                    self.stats.sent += 1
                    result = await request.send(self.client)
                    result["latency_s"] = time.monotonic() - started
                    self.cache.put(request.key, result)  # durable before it counts
                    self._account(result["usage"])
                    self.last_answer = time.monotonic()
                    return result
                except APIStatusError as exc:
                    if exc.status_code in PERMANENT_STATUS:
                        self.stop = EndpointError(
                            f"{s.base_url} refused the request ({exc.status_code}): {exc.message}. "
                            "Nothing more is sent; answered requests are cached."
                        )
                        return None
                    error, wait = f"HTTP {exc.status_code}", _retry_after(exc)
                except (APITimeoutError, APIConnectionError, APIResponseValidationError, ValueError) as exc:
                    error, wait = type(exc).__name__, None  # JSON errors are ValueErrors
                finally:
                    self.waiting.pop(ticket, None)
            self.stats.errors[error] = self.stats.errors.get(error, 0) + 1
            attempt += 1
            if attempt > s.max_retries:
                self.stats.failures += 1
                log.warning("request failed after %d retries (%s)", s.max_retries, error)
                return None
            self.stats.retries += 1
            await asyncio.sleep(max(wait or 0.0, self._backoff(attempt)))

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        return random.uniform(0, min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1)))

    def _account(self, usage: dict) -> None:
        prompt_price, completion_price = self.settings.prices_per_1k
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        self.stats.cost += (
            usage["prompt_tokens"] * prompt_price + usage["completion_tokens"] * completion_price
        ) / 1000


def answer_all(
    settings: EndpointSettings, cache: ResponseCache, requests: list[Request], desc: str, progress: bool = True
) -> Outcome:
    """Every request answered once (concurrently, cached as answers arrive). A permanent error or a stall
    ends the run early with Outcome.stop set; requests that ran out of retries are counted in stats.failures."""
    return asyncio.run(_answer_all(settings, cache, requests, desc, progress))


async def _answer_all(settings, cache, requests, desc, progress) -> Outcome:
    endpoint = Endpoint(settings, cache)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress)
    answers: dict[int, dict] = {}

    async def one(index: int, request: Request) -> None:
        result = await endpoint.answer(request)
        if result is not None:
            answers[index] = result
        bar.update(1)

    async def watch() -> None:
        """Show waiting requests and their age; stop when nothing has answered for stall_timeout."""
        while True:
            await asyncio.sleep(1.0)
            now, s = time.monotonic(), endpoint.stats
            oldest = now - min(endpoint.waiting.values()) if endpoint.waiting else 0.0
            postfix = {"tokens": s.prompt_tokens + s.completion_tokens, "retries": s.retries}
            if any(settings.prices_per_1k):
                postfix["cost"] = f"${s.cost:.4f}"
            bar.set_postfix(postfix, waiting=len(endpoint.waiting), oldest=f"{oldest:.0f}s")
            silent = now - endpoint.last_answer
            if endpoint.waiting and silent > settings.stall_timeout:
                endpoint.stop = EndpointError(
                    f"no answer from {settings.base_url} for {silent:.0f} s with {len(endpoint.waiting)} request(s) "
                    f"waiting (stall_timeout = {settings.stall_timeout:g} s): the endpoint accepts connections but "
                    f"does not answer. Check the server, then rerun the same command: the {len(answers)} answered "
                    "requests are cached and not sent again"
                )
                work.cancel()
                return

    work = asyncio.gather(*(one(i, request) for i, request in enumerate(requests)))
    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if endpoint.stop is None:
            raise
    finally:
        watcher.cancel()
        bar.close()
        await endpoint.client.close()
    return Outcome(answers=answers, stats=endpoint.stats, stop=endpoint.stop)
