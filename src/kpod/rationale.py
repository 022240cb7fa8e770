"""Rationale text utilities: the training template, step splitting and answer extraction.

Everything that turns free-form teacher or student text into steps and answers lives here, so
that the teacher, the trainer and the evaluator agree on it.
"""

from __future__ import annotations

import ast
import re
from typing import Literal

Task = Literal["math", "choice"]

PROMPT_TEMPLATE = "Q: {question} A: Let's think step by step."
ANSWER_SENTENCE = "Therefore, the answer is {answer}."
ANSWER_TRIGGER = "the answer is"
# what the reasoner and the faithfulness judge read before the answer: the answer sentence up to the answer
ANSWER_CUE = " " + ANSWER_SENTENCE.split(" {answer}")[0]
QUESTION_SEPARATOR = "\n"  # between the question and the rationale, for the reasoner and the judge


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=" ".join(question.split()))


def answer_sentence(answer: str) -> str:
    return ANSWER_SENTENCE.format(answer=answer)


def join_rationale_and_answer(rationale: str, answer: str) -> str:
    """The full target text of Std-CoT: rationale, a space, the answer sentence."""
    rationale = rationale.rstrip()
    return f"{rationale} {answer_sentence(answer)}" if rationale else answer_sentence(answer)


# ---------------------------------------------------------------- steps

_BOUNDARY = re.compile(r"\n\s*|[.?!]+[\"')\]]*\s+")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "e.g", "i.e", "approx", "no", "fig", "etc"}


def _ends_with_abbreviation(text: str, dot: int) -> bool:
    word = re.search(r"([A-Za-z.]+)$", text[:dot])
    if not word:
        return False
    token = word.group(1).lower().lstrip(".")
    # "etc." and "no." usually end sentences only when followed by a capital; keep them conservative
    if token in {"etc", "no"}:
        nxt = text[dot + 1 :].lstrip()[:1]
        return bool(nxt) and not nxt.isupper()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha() and text[dot - 1].isupper())


def split_steps(text: str) -> list[str]:
    """Split a rationale into steps on newlines and on sentence ends (`.`, `?`, `!` + whitespace).

    Each step keeps its trailing punctuation and whitespace, so ``"".join(split_steps(t)) == t``.
    Periods inside numbers (``0.83``, ``$9.96``, ``.3``) are never boundaries since they are not
    followed by whitespace; common abbreviations (``Mr.``, ``e.g.``) are skipped. Whitespace-only
    pieces are merged into a neighbour, so no step is empty.
    """
    steps: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group()[0] == "." and _ends_with_abbreviation(text, match.start()):
            continue
        piece = text[start : match.end()]
        if piece.strip():
            steps.append(piece)
            start = match.end()
    tail = text[start:]
    if tail:
        if tail.strip() or not steps:
            steps.append(tail)
        else:
            steps[-1] += tail
    return steps


def step_char_spans(steps: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for step in steps:
        spans.append((pos, pos + len(step)))
        pos += len(step)
    return spans


_TRAILING_ANSWER = re.compile(r"\s*(?:Therefore|Thus|So|Hence)?,?\s*the answer is\s*:?\s*[^\n]*\s*$", re.IGNORECASE)


def strip_answer_sentence(text: str) -> str:
    """Remove a final "(Therefore,) the answer is X." sentence; the template appends its own."""
    lines = text.rstrip()
    match = _TRAILING_ANSWER.search(lines)
    if match and match.start() > 0:
        return lines[: match.start()].rstrip()
    return lines


# ---------------------------------------------------------------- answers

_NUMBER = re.compile(r"(?<![\w.])(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/(\d+)(?![\d.]))?%?")


_EXPRESSION = re.compile(r"^\s*:?\s*(\(?[\d\s.+\-*/()]*\d[\d\s.+\-*/()]*\)?)")


def _evaluate_arithmetic(expression: str) -> float | None:
    """Value of a plain arithmetic expression such as `(79 - 53)`, or None (never `eval`)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node):
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Div):
                return left / right
            return (
                left + right
                if isinstance(node.op, ast.Add)
                else left - right
                if isinstance(node.op, ast.Sub)
                else left * right
            )
        raise ValueError("not arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError):
        return None


def _answer_after_trigger(after: str) -> str | None:
    """The number after "the answer is"; an arithmetic expression there (PaLM writes
    `The answer is (79 - 53).`) is evaluated."""
    expression = _EXPRESSION.match(after)
    if expression and re.search(r"[\d)]\s*[-+*/]\s*[(\-\s]*\d", expression.group(1)):
        result = _evaluate_arithmetic(expression.group(1).strip().rstrip("."))
        if result is not None:
            return normalize_number(result)
    found = _number_matches(after)
    return found[0] if found else None


def _number_matches(text: str) -> list[str]:
    values = []
    for m in _NUMBER.finditer(text):
        sign, body, denominator = m.groups()
        value = float(body.replace(",", ""))
        if denominator:
            if int(denominator) == 0:
                continue
            value /= int(denominator)
        values.append(normalize_number(-value if sign else value))
    return values


def normalize_number(value: float) -> str:
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def normalize_gold(answer: str | float | int, task: Task) -> str:
    if task == "choice":
        return str(answer).strip().upper()
    found = _number_matches(str(answer))
    if not found:
        raise ValueError(f"gold answer {answer!r} holds no number")
    return found[0]


_LETTER_AFTER_TRIGGER = re.compile(r"^\s*:?\s*\(?([A-Ea-e])\)?(?![A-Za-z])")
# an option letter stands alone; "A" before a lower-case word is an article ("A lot"), unless that word
# joins options ("A or C", "A and B", "B is")
_LETTER = re.compile(r"\(([A-E])\)|(?<![A-Za-z'])([A-E])(?![A-Za-z'])(?!\s+(?!(?:or|and|nor|but|is|seems)\b)[a-z])")


def _final_statement_number(text: str) -> str | None:
    """The result of the last step that holds a number: the first number after its last "=",
    else its first number ("they made 2 dollars a day over the 57 days" -> 2)."""
    for step in reversed(split_steps(text)):
        found = _number_matches(step.split("=")[-1]) if "=" in step else []
        found = found or _number_matches(step)
        if found:
            return found[0]
    return None


def extract_answer(
    text: str,
    task: Task,
    choices: list[str] | None = None,
    fallback: Literal["final_statement", "last_number"] = "final_statement",
) -> str | None:
    """The answer a rationale ends in, normalised: a number string (math) or a letter A-E (choice).

    Math: the first number after the last "the answer is"; without that phrase, the result of the
    final statement (the number after its last "=", else its first number), or with
    fallback="last_number" the last number in the text (the MCC-KD evaluator's rule).
    Choice: the first standalone option letter after the last "the answer is" (a hedged "the answer
    is probably A or C" takes A, as zero-shot-CoT's answer cleansing does, but "But" holds no B),
    else the option whose text is named first after it, else the last standalone option letter,
    else the option whose text is named last. Returns None when nothing answer-like is found.
    """
    lowered = text.lower()
    trigger = lowered.rfind(ANSWER_TRIGGER)
    after = text[trigger + len(ANSWER_TRIGGER) :] if trigger >= 0 else None
    if task == "math":
        if after is not None:
            found_after = _answer_after_trigger(after)
            if found_after is not None:
                return found_after
        return _final_statement_number(text) if fallback == "final_statement" else (_number_matches(text) or [None])[-1]
    if task != "choice":
        raise ValueError(f"unknown task {task!r}: expected 'math' or 'choice'")
    if after is not None:
        m = _LETTER_AFTER_TRIGGER.match(after)
        if m:
            return m.group(1).upper()
        hedged = _LETTER.search(after)
        if hedged:
            return hedged.group(1) or hedged.group(2)
        if choices:  # a hedged answer ("the answer is bank or library") takes the first choice named
            named = _named_choice(after.lower(), choices, first=True)
            if named:
                return named
    letters = [a or b for a, b in _LETTER.findall(text)]
    if letters:
        return letters[-1]
    return _named_choice(lowered, choices, first=False) if choices else None


def _named_choice(lowered: str, choices: list[str], first: bool) -> str | None:
    """The option whose text appears first (or last) in `lowered`."""
    found = [
        (lowered.find(c.lower().strip()) if first else lowered.rfind(c.lower().strip()), "ABCDE"[i])
        for i, c in enumerate(choices)
        if c.strip() and c.lower().strip() in lowered
    ]
    if not found:
        return None
    return (min(found) if first else max(found))[1]


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def answers_match(pred: str | None, gold: str, task: Task, rel_tol: float = 1e-4) -> bool:
    if pred is None:
        return False
    if task == "choice":
        return pred.strip().upper() == gold.strip().upper()
    try:
        p, g = (float(x) if _is_float(x) else float(_number_matches(x)[0]) for x in (pred, gold))
    except IndexError:
        return False
    return abs(p - g) <= max(1e-6, rel_tol * abs(g))
