"""A teacher behind any OpenAI-compatible chat endpoint (OpenAI, vLLM, `transformers serve`).

The requests go through kpod.endpoint: every answer is cached before it counts (a rerun after Ctrl-C or
kill -9 pays nothing twice; the key covers endpoint, model, messages, temperature, max tokens and sample
index), with retries, rate limits and a stall timeout. The API key is read from the environment and never
written anywhere.
"""

from __future__ import annotations

import logging
import math
import os
from importlib import resources
from pathlib import Path

from kpod.config import KPODConfig
from kpod.data.datasets import Question
from kpod.endpoint import EndpointError, EndpointSettings, Request, ResponseCache, answer_all, chat, request_key
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


class TeacherError(EndpointError):
    """The teacher run cannot go on (permanent API error, missing key); answered requests are kept."""


def load_prompts(cfg: KPODConfig) -> tuple[str, str]:
    t = cfg.teacher
    bundled = resources.files("kpod.teacher") / "prompts"
    template = Path(t.prompt_template).read_text() if t.prompt_template else (bundled / "zero_shot_cot.txt").read_text()
    system = Path(t.system_prompt).read_text() if t.system_prompt else (bundled / "system.txt").read_text()
    if "{question}" not in template:
        raise ValueError(f"{t.prompt_template}: the prompt template must contain {{question}}")
    return template, system.strip()


def build_messages(question: Question, template: str, system: str) -> list[dict]:
    user = template.format(question=question.question, choices=", ".join(question.choices or []))
    return [{"role": "system", "content": system}, {"role": "user", "content": user.strip()}]


def endpoint_settings(cfg: KPODConfig, api_key: str) -> EndpointSettings:
    t = cfg.teacher
    default_prices = PRICES.get(t.model, (0.0, 0.0))
    return EndpointSettings(
        base_url=t.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
        api_key=api_key,
        concurrency=t.concurrency,
        requests_per_minute=t.requests_per_minute,
        tokens_per_minute=t.tokens_per_minute,
        batch_delay=t.batch_delay,
        max_retries=t.max_retries,
        timeout=t.timeout,
        stall_timeout=t.stall_timeout,
        backoff_base=t.backoff_base,
        backoff_max=t.backoff_max,
        prices_per_1k=(
            t.price_per_1k_prompt if t.price_per_1k_prompt is not None else default_prices[0],
            t.price_per_1k_completion if t.price_per_1k_completion is not None else default_prices[1],
        ),
    )


def check_budget(cfg: KPODConfig, settings: EndpointSettings, to_send: list[Request], total: int) -> None:
    """Log the run's size before anything is sent; refuse when its cost at most is above teacher.budget_usd."""
    t = cfg.teacher
    prompt_price, completion_price = settings.prices_per_1k
    prompt_tokens = sum(r.tokens - t.max_tokens for r in to_send)
    most = (prompt_tokens * prompt_price + len(to_send) * t.max_tokens * completion_price) / 1000
    priced = prompt_price > 0 or completion_price > 0
    known = priced or t.price_per_1k_prompt is not None or t.model in PRICES
    log.info(
        "teacher %s at %s: %d requests to send (%d already answered in the cache), about %d prompt tokens; cost %s",
        t.model,
        settings.base_url,
        len(to_send),
        total - len(to_send),
        prompt_tokens,
        f"at most ${most:.2f} (every answer at teacher.max_tokens={t.max_tokens})"
        if known
        else "unknown (no price for this model: set teacher.price_per_1k_prompt and teacher.price_per_1k_completion)",
    )
    if priced and most > t.budget_usd:
        raise TeacherError(
            f"this run may cost up to ${most:.2f} ({len(to_send)} requests to {t.model} at up to {t.max_tokens} "
            f"completion tokens each), above teacher.budget_usd=${t.budget_usd:g}; nothing was sent. To go on, "
            f"raise it: --set teacher.budget_usd={math.ceil(most)}; or ask fewer questions "
            "(--set data.max_train_questions=N) or lower teacher.max_tokens"
        )


def run_openai_teacher(
    cfg: KPODConfig, questions: list[Question], paths, progress: bool = True
) -> tuple[list[dict], dict]:
    """The generate stage with an OpenAI-compatible teacher: every (question, sample) asked once, answers
    cached as they arrive; returns the rationale records and a summary (requests, retries, tokens, cost)."""
    t = cfg.teacher
    api_key = os.environ.get(t.api_key_env)
    if not api_key:
        raise TeacherError(
            f"no API key: set {t.api_key_env} (and OPENAI_BASE_URL for a non-OpenAI endpoint such as vLLM or "
            "`transformers serve`), or choose another teacher: --set teacher.kind=reference (the dataset's worked "
            "solutions, GSM8K) or --set teacher.kind=file --set teacher.import_path=<rationales.jsonl>"
        )
    settings = endpoint_settings(cfg, api_key)
    template, system = load_prompts(cfg)
    jobs, requests = [], []
    for q in questions:
        messages = build_messages(q, template, system)
        for sample in range(t.samples_per_question):
            key = request_key(settings.base_url.rstrip("/"), t.model, messages, t.temperature, t.max_tokens, sample)
            send = chat(
                t.model,
                messages=messages,
                temperature=t.temperature,
                max_tokens=t.max_tokens,
                seed=sample if t.samples_per_question > 1 else None,
            )
            tokens = t.max_tokens + sum(len(m["content"]) for m in messages) // 4
            jobs.append((q, sample))
            requests.append(Request(key=key, send=send, tokens=tokens))
    cache = ResponseCache(paths.teacher_cache, what="teacher cache", rerun="rerun `kpod generate`")
    try:
        check_budget(cfg, settings, [r for r in requests if cache.get(r.key) is None], len(requests))
        outcome = answer_all(settings, cache, requests, desc=f"teacher {t.model}", progress=progress)
    finally:
        cache.close()
    answers, s = outcome.answers, outcome.stats
    no_text = {i: a["no_text"] for i, a in answers.items() if a.get("no_text")}
    if no_text:
        first = next(iter(no_text))
        log.warning(
            "the teacher answered %d of %d requests without text (e.g. %s: %s); those questions get no rationale "
            "from it and are not asked again (the answer is cached)",
            len(no_text),
            len(jobs),
            jobs[first][0].id,
            no_text[first],
        )
    records = [
        rationale_record(
            q,
            answers[i]["text"],
            teacher=f"openai:{t.model}",
            sample=sample,
            usage=answers[i]["usage"],
            latency_s=answers[i]["latency_s"],
        )
        for i, (q, sample) in enumerate(jobs)
        if i in answers and i not in no_text
    ]
    summary = {
        "teacher": f"openai:{t.model}",
        "endpoint": settings.base_url,
        "requests_sent": s.sent,
        "answered_from_cache": s.cached,
        "retries": s.retries,
        "failed": s.failures,
        "errors": s.errors,
        "answered_without_text": {r: list(no_text.values()).count(r) for r in sorted(set(no_text.values()))},
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "cost_usd": round(s.cost, 6),
    }
    log.info("teacher summary: %s", summary)
    if outcome.stop:
        raise TeacherError(f"teacher: {outcome.stop}")
    if s.failures:
        raise TeacherError(
            f"{s.failures} of {len(jobs)} requests failed after {t.max_retries} retries "
            f"({s.errors}); rerun the same command: the {len(answers)} answered ones are cached and not paid again"
        )
    return records, summary
