"""Prompt-injection heuristics for text the model did not get from the user: tool results and retrieved
documents. Phrases that try to override the instructions, role-play set-ups that swap the system prompt,
chat-template tokens smuggled into data, and markup that hides text from a human reader.

Heuristics, not a classifier: they catch the common copy-pasted attacks cheaply (one RE2 scan per family)
and are documented in docs/guardrails.md so an operator knows what is and is not covered.
"""

from __future__ import annotations

import re2

from modelyard.schema.patterns import compile_pattern

_OVERRIDE = (
    r"(?i)\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:all\s+|any\s+|the\s+|your\s+|my\s+|these\s+|"
    r"those\s+)*(?:previous|prior|above|earlier|preceding|original|system|initial)\s+"
    r"(?:instructions?|prompts?|messages?|rules|directions|guidelines|context)"
    r"|(?i)\bnew\s+(?:system\s+)?instructions?\s*:"
    r"|(?i)\b(?:reveal|print|show|repeat|output|leak)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|"
    r"hidden\s+instructions|initial\s+instructions|instructions\s+above)"
    r"|(?i)\bdo\s+not\s+(?:tell|inform|alert)\s+the\s+user\b"
)
_ROLE_PLAY = (
    r"(?i)\byou\s+are\s+now\s+(?:DAN\b|in\s+(?:developer|god|jailbreak|unrestricted)\s+mode|"
    r"(?:an?\s+)?(?:unrestricted|unfiltered|jailbroken|uncensored)\b)"
    r"|(?i)\b(?:pretend|act)\s+(?:to\s+be|as)\s+(?:an?\s+)?(?:unrestricted|unfiltered|jailbroken|uncensored|"
    r"evil|different)\s+(?:AI|assistant|model|system)"
    r"|(?i)\bfrom\s+now\s+on,?\s+you\s+(?:will|must|are)\b"
    r"|(?i)\benable\s+(?:developer|DAN|jailbreak)\s+mode\b"
)
_TEMPLATE = (
    r"<\|im_start\|>|<\|im_end\|>|<\|system\|>|<\|start_header_id\|>|\[/?INST\]|<<SYS>>|<</SYS>>"
    r"|(?i)</?system>|(?i)^#{2,}\s*(?:system|instruction)s?\s*:?\s*$|(?im)^(?:system|assistant)\s*:\s"
)
_HIDDEN = (
    r"[\x{200B}-\x{200F}\x{202A}-\x{202E}\x{2060}-\x{2064}\x{FEFF}]{2,}"
    r"|[\x{E0000}-\x{E007F}]"
    r"|(?i)<!--[^>]{0,1000}?\b(?:instruction|assistant|ignore|system|prompt)"
    r"|(?i)style\s*=\s*[\"'][^\"']{0,200}?(?:display\s*:\s*none|font-size\s*:\s*0|visibility\s*:\s*hidden|"
    r"color\s*:\s*(?:white|#fff(?:fff)?\b|transparent))"
)

#: family → its RE2 pattern; the family is the finding's kind.
FAMILIES: tuple[tuple[str, re2._Regexp[str]], ...] = (
    ("override", compile_pattern(_OVERRIDE)),
    ("role_play", compile_pattern(_ROLE_PLAY)),
    ("template_tokens", compile_pattern(_TEMPLATE)),
    ("hidden_markup", compile_pattern(_HIDDEN)),
)


def families_in(text: str) -> list[str]:
    """The injection families that occur in `text`."""
    return [kind for kind, pattern in FAMILIES if pattern.search(text) is not None]
