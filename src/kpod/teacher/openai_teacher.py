"""A teacher behind any OpenAI-compatible chat endpoint (OpenAI, vLLM, `transformers serve`).

Built for a user who pays per token:
- every answered request is committed to a SQLite cache before it counts, so re-running the same
  command after Ctrl-C or kill -9 sends no request for anything already answered; the key covers
  endpoint, model, messages, temperature, max tokens and sample index;
- retries live here only (the client's own are off): jittered exponential backoff on 429, 5xx,
  timeouts, dropped connections and malformed responses, honouring Retry-After; a permanent error
  (401, 403, 400, 404, 422) stops the run at once;
- concurrency, requests-per-minute and tokens-per-minute limits, and an optional fixed pause;
- the API key is read from the environment and never written anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from kpod.config import KPODConfig
from kpod.data.datasets import DataError, Question
from kpod.teacher.records import rationale_record

log = logging.getLogger(__name__)

# USD per 1000 tokens (prompt, completion); override with teacher.price_per_1k_*.
PRICES = {
    "gpt-3.5-turbo": (0.0005, 0.0015),
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1": (0.002, 0.008),
}
PERMANENT_STATUS = {400, 401, 403, 404, 422}


class TeacherError(RuntimeError):
    """The teacher run cannot go on (permanent API error, missing key); answered requests are kept."""


class ResponseCache:
    """Answered requests, committed one by one (WAL, synchronous=FULL), safe under kill -9."""

    def __init__(self, path: Path):
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
            raise DataError(
                f"{path}: damaged teacher cache ({exc}); move it away and rerun `kpod generate` (the answers it held "
                "are then requested, and paid for, again)"
            ) from None

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, response: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", (key, json.dumps(response), time.time()))

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


@dataclass
class Stats:
    sent: int = 0
    retries: int = 0
    failures: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    errors: dict = field(default_factory=dict)


def load_prompts(cfg: KPODConfig) -> tuple[str, str]:
    t = cfg.teacher
    bundled = resources.files("kpod.teacher") / "prompts"
    template = Path(t.prompt_template).read_text() if t.prompt_template else (bundled / "zero_shot_cot.txt").read_text()
    system = Path(t.system_prompt).read_text() if t.system_prompt else (bundled / "system.txt").read_text()
    if "{question}" not in template:
        raise ValueError(f"{t.prompt_template}: the prompt template must contain {{question}}")
    return template, system.strip()


def request_key(
    base_url: str, model: str, messages: list[dict], temperature: float, max_tokens: int, sample: int
) -> str:
    blob = json.dumps([base_url.rstrip("/"), model, messages, temperature, max_tokens, sample], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAITeacher:
    def __init__(self, cfg: KPODConfig, cache: ResponseCache, api_key: str):
        from openai import AsyncOpenAI

        t = self.t = cfg.teacher
        self.base_url = t.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        from openai import Timeout

        self.client = AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=0,
            timeout=Timeout(t.timeout, connect=min(10.0, t.timeout)),
        )
        self.last_answer = time.monotonic()
        self.waiting: dict[int, float] = {}  # request number -> when it was sent
        self.cache = cache
        self.limiter = RateLimiter(t.requests_per_minute, t.tokens_per_minute)
        self.semaphore = asyncio.Semaphore(t.concurrency)
        default = PRICES.get(t.model, (0.0, 0.0))
        self.prices = (
            t.price_per_1k_prompt if t.price_per_1k_prompt is not None else default[0],
            t.price_per_1k_completion if t.price_per_1k_completion is not None else default[1],
        )
        self.stats = Stats()
        self.stop: TeacherError | None = None

    async def complete(self, key: str, messages: list[dict], sample: int) -> dict | None:
        """One answered request (from the cache or the endpoint), or None after the retries ran out."""
        from openai import APIConnectionError, APIResponseValidationError, APIStatusError, APITimeoutError

        cached = self.cache.get(key)
        if cached is not None:
            self.stats.cached += 1
            return cached
        attempt = 0
        while True:
            async with self.semaphore:
                if self.stop:  # a permanent error elsewhere: send nothing more
                    return None
                if self.t.batch_delay:
                    await asyncio.sleep(self.t.batch_delay)
                await self.limiter.acquire(self.t.max_tokens + sum(len(m["content"]) for m in messages) // 4)
                started = time.monotonic()
                ticket = self.stats.sent
                self.waiting[ticket] = started
                try:
                    self.stats.sent += 1
                    result = await self._send(messages, sample, started)
                    self.cache.put(key, result)  # durable before it counts
                    self._account(result["usage"])
                    self.last_answer = time.monotonic()
                    return result
                except APIStatusError as exc:
                    if exc.status_code in PERMANENT_STATUS:
                        self.stop = TeacherError(
                            f"the teacher endpoint refused the request ({exc.status_code}): "
                            f"{exc.message}. Nothing more is sent; answered requests are cached."
                        )
                        return None
                    error, wait = f"HTTP {exc.status_code}", _retry_after(exc)
                except (
                    APITimeoutError,
                    APIConnectionError,
                    APIResponseValidationError,
                    ValueError,
                ) as exc:  # JSON errors are ValueErrors
                    error, wait = type(exc).__name__, None
                finally:
                    self.waiting.pop(ticket, None)
            self.stats.errors[error] = self.stats.errors.get(error, 0) + 1
            attempt += 1
            if attempt > self.t.max_retries:
                self.stats.failures += 1
                log.warning("request failed after %d retries (%s)", self.t.max_retries, error)
                return None
            self.stats.retries += 1
            await asyncio.sleep(max(wait or 0.0, self._backoff(attempt)))

    async def _send(self, messages: list[dict], sample: int, started: float) -> dict:
        """One chat completion: its text, latency and token usage (ValueError when it has no text)."""
        extra = {"seed": sample} if self.t.samples_per_question > 1 else {}
        response = await self.client.chat.completions.create(
            model=self.t.model, messages=messages, temperature=self.t.temperature, max_tokens=self.t.max_tokens, **extra
        )
        text = response.choices[0].message.content
        if text is None:
            raise ValueError("response without message content")
        usage = response.usage
        return {
            "text": text,
            "latency_s": time.monotonic() - started,
            "usage": {
                "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
            },
        }

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        return random.uniform(0, min(self.t.backoff_max, self.t.backoff_base * 2 ** (attempt - 1)))

    def _account(self, usage: dict) -> None:
        self.stats.prompt_tokens += usage["prompt_tokens"]
        self.stats.completion_tokens += usage["completion_tokens"]
        self.stats.cost += (
            usage["prompt_tokens"] * self.prices[0] + usage["completion_tokens"] * self.prices[1]
        ) / 1000


def build_messages(question: Question, template: str, system: str) -> list[dict]:
    user = template.format(question=question.question, choices=", ".join(question.choices or []))
    return [{"role": "system", "content": system}, {"role": "user", "content": user.strip()}]


async def _run(cfg: KPODConfig, questions: list[Question], cache: ResponseCache, api_key: str, progress: bool):
    teacher = OpenAITeacher(cfg, cache, api_key)
    template, system = load_prompts(cfg)
    jobs = []
    for q in questions:
        messages = build_messages(q, template, system)
        for sample in range(cfg.teacher.samples_per_question):
            key = request_key(
                teacher.base_url,
                cfg.teacher.model,
                messages=messages,
                temperature=cfg.teacher.temperature,
                max_tokens=cfg.teacher.max_tokens,
                sample=sample,
            )
            jobs.append((q, sample, key, messages))
    bar = tqdm(total=len(jobs), desc=f"teacher {cfg.teacher.model}", disable=not progress)
    results: dict[int, dict] = {}

    async def one(index: int, job) -> None:
        q, sample, key, messages = job
        result = await teacher.complete(key, messages, sample)
        if result is not None:
            results[index] = result
        bar.update(1)

    async def watch() -> None:
        """Show waiting requests and their age; stop when nothing has answered for stall_timeout."""
        while True:
            await asyncio.sleep(1.0)
            now, s = time.monotonic(), teacher.stats
            oldest = now - min(teacher.waiting.values()) if teacher.waiting else 0.0
            bar.set_postfix(
                tokens=s.prompt_tokens + s.completion_tokens,
                cost=f"${s.cost:.4f}",
                retries=s.retries,
                waiting=len(teacher.waiting),
                oldest=f"{oldest:.0f}s",
            )
            silent = now - teacher.last_answer
            if teacher.waiting and silent > cfg.teacher.stall_timeout:
                teacher.stop = TeacherError(
                    f"no answer from {teacher.base_url} for {silent:.0f} s with {len(teacher.waiting)} request(s) waiting "
                    f"(teacher.stall_timeout = {cfg.teacher.stall_timeout:g} s): the endpoint accepts connections but does not "
                    f"answer. Check the server, then rerun the same command: the {len(results)} answered requests are "
                    "cached and not paid again"
                )
                work.cancel()
                return

    work = asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
    watcher = asyncio.create_task(watch())
    try:
        await work
    except asyncio.CancelledError:
        if teacher.stop is None:
            raise
    finally:
        watcher.cancel()
        bar.close()
        await teacher.client.close()
    return teacher, jobs, results


def run_openai_teacher(
    cfg: KPODConfig, questions: list[Question], paths, progress: bool = True
) -> tuple[list[dict], dict]:
    """The generate stage with an OpenAI-compatible teacher: every (question, sample) asked once, answers
    cached as they arrive; returns the rationale records and a summary (requests, retries, tokens, cost)."""
    api_key = os.environ.get(cfg.teacher.api_key_env)
    if not api_key:
        raise TeacherError(
            f"no API key: set {cfg.teacher.api_key_env} (and OPENAI_BASE_URL for a non-OpenAI endpoint such as vLLM or "
            "`transformers serve`), or choose another teacher: --set teacher.kind=reference (the dataset's worked "
            "solutions, GSM8K) or --set teacher.kind=file --set teacher.import_path=<rationales.jsonl>"
        )
    cache = ResponseCache(paths.teacher_cache)
    try:
        teacher, jobs, results = asyncio.run(_run(cfg, questions, cache, api_key, progress))
    finally:
        cache.close()
    records = [
        rationale_record(
            q,
            results[i]["text"],
            teacher=f"openai:{cfg.teacher.model}",
            sample=sample,
            usage=results[i]["usage"],
            latency_s=results[i]["latency_s"],
        )
        for i, (q, sample, _, _) in enumerate(jobs)
        if i in results
    ]
    s = teacher.stats
    summary = {
        "teacher": f"openai:{cfg.teacher.model}",
        "endpoint": teacher.base_url,
        "requests_sent": s.sent,
        "answered_from_cache": s.cached,
        "retries": s.retries,
        "failed": s.failures,
        "errors": s.errors,
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "cost_usd": round(s.cost, 6),
    }
    log.info("teacher summary: %s", summary)
    if teacher.stop:
        raise teacher.stop
    if s.failures:
        raise TeacherError(
            f"{s.failures} of {len(jobs)} requests failed after {cfg.teacher.max_retries} retries "
            f"({s.errors}); rerun the same command: the {len(results)} answered ones are cached and not paid again"
        )
    return records, summary
