"""Turn a model's generated continuation into the short answer that gets scored.

A generative model answers "What colour is the car?" with "It's blue.\\nThe car is parked..."
or "ASSISTANT: Yes, there is." while the benchmarks score one short phrase ("blue", "yes").
`parse_answer` bridges the two with a small, predictable set of surface rules, applied in order:

1. curly apostrophes become "'", then surrounding whitespace is stripped;
2. leading template prefixes (`DEFAULT_PREFIXES`, matched case-insensitively, repeatedly, so
   "ASSISTANT: Answer: yes" loses both) are dropped together with a following ":" or "-";
3. only the first line is kept, and of it only the first sentence (a cut at ". ", "! " or "? "
   followed by more text; "3.5" and "e.g." without a following space are not cut);
4. the text is lower-cased and stray markdown/quote characters (* ` ") and trailing
   punctuation (. , ; : ! ?) are removed;
5. a leading yes/no followed by punctuation, the end, or a pronoun/copula ("no, it isn't",
   "yes it is") becomes just "yes"/"no"; "no one" or "no smoking" are kept as they are;
6. a copula lead-in ("it's", "it is", "there are", "they are", "this is", ...) is removed when
   something follows it: "It's blue" -> "blue", "There are 3" -> "3".

What is deliberately *not* done here: number words are not mapped to digits, articles are not
removed, contractions are not expanded and inner punctuation is untouched. That is scoring
normalisation and belongs to the scorer (`shared.metrics.vqa_accuracy` applies the official VQA
normalisation, `gqa_accuracy` its own), so parsed answers stay comparable across benchmarks and
parse_answer never double-normalises. Lower-casing is the one overlap: every scorer lower-cases
anyway, and it keeps the rules above simple.
"""

from __future__ import annotations

import re
from typing import Sequence

# Template and chat-role prefixes seen in front of generated answers. Matching is case-insensitive
# (so "assistant:" also covers LLaVA-style "ASSISTANT:" and "A:" is "a:") and longest-first, so
# "answer:" wins over "a:". "a:" needs its colon: a bare "a" answer is left alone.
DEFAULT_PREFIXES: tuple[str, ...] = (
    "assistant:",
    "answer:",
    "short answer:",
    "final answer:",
    "the answer is",
    "the correct answer is",
    "a:",
)

_SENTENCE_END = re.compile(r"[.!?]\s+(?=\S)")
_EDGE_MARKS = "*`\""
_TRAILING = ".,;:!?" + _EDGE_MARKS
_YES_NO = re.compile(r"^(yes|no)(?:(?P<sep>[\s,.;:!?-]+)(?P<rest>.*))?$")
# Words after a bare "yes"/"no" (no punctuation) that show it is a yes/no answer being elaborated.
_YES_NO_FOLLOWERS = frozenset({
    "it", "it's", "its", "there", "there's", "they", "they're", "he", "she", "this", "that",
    "these", "those", "i", "we", "you", "is", "are", "was", "were", "does", "do", "did", "not",
    "can", "cannot", "can't", "isn't", "aren't", "the",
})
_COPULA_LEADS = (
    "it's", "it is", "it was", "they're", "they are", "they were", "this is", "that's",
    "that is", "these are", "those are", "there's", "there is", "there are", "there was",
    "there were", "he's", "he is", "she's", "she is",
)
_COPULA = re.compile(r"^(?:" + "|".join(re.escape(c) for c in sorted(_COPULA_LEADS, key=len, reverse=True))
                     + r")\s+(?P<rest>\S.*)$")


def _strip_prefixes(text: str, prefixes: Sequence[str]) -> str:
    """Drop leading template prefixes (case-insensitive) until none applies."""
    ordered = sorted((p.lower() for p in prefixes), key=len, reverse=True)
    changed = True
    while changed and text:
        changed = False
        lowered = text.lower()
        for prefix in ordered:
            if not lowered.startswith(prefix):
                continue
            after = text[len(prefix):]
            # A word-like prefix ("the answer is") must end at a word boundary.
            if prefix[-1].isalnum() and after[:1].isalnum():
                continue
            text = after.lstrip().lstrip(":-").strip()
            changed = True
            break
    return text


def _first_sentence(text: str) -> str:
    """The first line, cut at the first sentence end that has more text after it."""
    text = text.split("\n", 1)[0].strip()
    match = _SENTENCE_END.search(text)
    return text[:match.start() + 1] if match else text


def _trim(text: str) -> str:
    """Lower-case; remove edge markdown/quote marks and trailing punctuation."""
    return text.lower().strip().lstrip(_EDGE_MARKS + " ").rstrip(_TRAILING + " ")


def parse_answer(raw: str, prefixes: Sequence[str] = DEFAULT_PREFIXES) -> str:
    """The short answer in a generated continuation; "" for empty or whitespace-only input."""
    if not isinstance(raw, str):
        raise ValueError(f"parse_answer: raw is {raw!r} ({type(raw).__name__}); expected a string")
    if isinstance(prefixes, str) or any(not isinstance(p, str) or not p.strip() for p in prefixes):
        raise ValueError(f"parse_answer: prefixes is {prefixes!r}; expected a sequence of non-empty strings")
    text = raw.replace("\u2019", "'").replace("\r", "\n").strip()
    text = _strip_prefixes(text, prefixes)
    text = _trim(_first_sentence(text))

    match = _YES_NO.match(text)
    if match:
        sep, rest = match.group("sep") or "", match.group("rest") or ""
        first_word = rest.split(" ", 1)[0]
        # A lone hyphen is part of a word ("no-one"), not a separator.
        punctuated = bool(sep.strip()) and sep != "-"
        if not rest or punctuated or first_word in _YES_NO_FOLLOWERS:
            return match.group(1)

    match = _COPULA.match(text)
    if match:
        text = _trim(match.group("rest"))
    return text
