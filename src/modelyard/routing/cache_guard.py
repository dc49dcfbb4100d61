"""The semantic cache's precision guard: a cached answer is served only when the two prompts ask the same.

Why: a sentence embedding scores "refund order 9876" 0.995 against "refund order 1234", "the food was
terrible" 0.96 against "... excellent", "explain to a beginner" 0.99 against "... to an expert", while a
case-only change can fall below the threshold. Similarity says *what the prompt is about*, not *what it
asks*; the guard checks the parts that change the answer. It runs only on a candidate hit (an entry over
the similarity threshold, or one whose normalised text is the same), so a miss pays nothing for it.

Two prompts agree when, after normalising case, punctuation, whitespace, contractions and polite fillers:
1. the protected tokens (numbers as written, quoted words, named entities, e-mails, URLs, codes, operators
   and symbols) are the same, in the same order within each sentence (sentences may be swapped);
2. the shared words come in the same order within each sentence ("from english into french");
3. every word that differs is neither a negation, nor a word of a closed class whose members exclude each
   other (audience, units, dates, languages, tense, number words, pronouns, prepositions...), nor the other
   end of a polarity axis, nor its counterpart with a negating prefix (lock/unlock);
4. the remaining differing content words pair up one to one (at most `max_swaps` pairs), each pair a near
   synonym: the embedder's cosine of the two words at least `synonym_similarity`. Without an embedder, no
   content word may differ.

Function words ("the", "a", "of") may differ freely. The guard compares the whole prompt, not the
embedding's first 256 tokens, so a difference past the embedding window is still seen.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: Longest prompt the guard fingerprints (characters); a longer one is never cached (nor served a hit).
MAX_PROMPT_CHARS = 32_768

_QUOTES = str.maketrans(
    {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'", "`": "'", "\u00b4": "'"}
)
_CONTRACTIONS = [
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"(\w)n't\b"), r"\1 not"),
    (re.compile(r"\b(i|you|we|they)'re\b"), r"\1 are"),
    (re.compile(r"\b(it|he|she|that|what|there)'s\b"), r"\1 is"),
    (re.compile(r"\b(i|you|we|they)'ll\b"), r"\1 will"),
    (re.compile(r"\b(i|you|we|they)'ve\b"), r"\1 have"),
    (re.compile(r"\bi'm\b"), "i am"),
    (re.compile(r"\bi'd\b"), "i would"),
]
_POLITE_HEAD = re.compile(
    r"^(?:(?:hi|hello|hey|greetings|dear \w+)(?: there)?[\s,!.:;-]+)?"
    r"(?:(?:please|kindly|pls)[\s,]+)?"
    r"(?:(?:can|could|would|will) you(?: please| kindly)?[\s,]+)?"
    r"(?:i (?:would like|'d like|want|need) you to[\s,]+|"
    r"i (?:would like|'d like|want|need) to know[\s,]+|"
    r"(?:tell me|let me know|help me(?: to)?)[\s,]+)?"
    r"(?:(?:please|kindly|pls)[\s,]+)?"
)
_POLITE_TAIL = re.compile(r"(?:[\s,.;!-]*(?:please|thanks|thank you|thx|ty|cheers)(?: (?:so|very) much)?)+[\s.!?]*$")
_TAIL_WINDOW = 160
_TOKEN = re.compile(
    r"(?P<url>(?:https?://|www\.)[^\s\"'<>]+)"
    r"|(?P<email>(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"  # from a run's start only: linear
    r"|(?P<num>[-+]?(?:\d[\d,_]*)?\.?\d+(?:[eE][-+]?\d+)?%?)"
    # Operators and symbols (emoji, currency, math) are words too: "a == b" is not "a != b", a thumbs-down
    # is not a thumbs-up. Ordinary punctuation and a hyphen inside a word are not.
    r"|(?P<sym>[!<>=]=|->|=>|&&|\|\||\*\*|<<|>>|[+*/=<>^&|~%\\]|(?<![^\W\d_])-|-(?![^\W\d_])"
    r"|[^\w\s.,;:!?'\"()\[\]{}-])"
    r"|(?P<word>\w+(?:['.]\w+)*)",
)
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+")
_QUOTED = re.compile(r"\"([^\"\n]{1,500})\"|(?<!\w)'([^'\n]{1,500})'(?!\w)")
#: A capitalised word right after one of these (or at the start) may just open a sentence or an item.
_OPENERS = frozenset(".!?:;\n([{\"'*#>-|\u2022")


#: Words that carry no meaning a cached answer depends on: differing ones are ignored.
def _lexicon(text: str) -> frozenset[str]:
    return frozenset(text.split())


FILLER = _lexicon(
    "please kindly pls just basically actually really simply hey hi hello thanks thank thx "
    "the a an this that these those it its of as so also here there certain "
    "um uh well okay ok oh hmm"
)
NEGATIONS = _lexicon("not no never none nobody nothing neither nor without nowhere nope")
#: Closed classes: two different members ask different things, so a differing member refuses the hit.
EXCLUSIVE = _lexicon(
    # audience and register
    "beginner beginners novice novices expert experts child children kid kids toddler teenager teenagers "
    "student students teacher teachers adult adults professional professionals advanced intermediate "
    "basic elementary undergraduate graduate phd layman laymen layperson senior junior manager managers "
    "developer developers engineer engineers doctor doctors patient patients lawyer customer customers "
    "formal informal casual technical nontechnical academic simple complex detailed brief short long "
    "shorter longer concise verbose funny serious "
    # units
    "mm cm m km meter meters metre metres kilometer kilometers kilometre kilometres mile miles inch inches "
    "foot feet ft yard yards mg g kg gram grams kilogram kilograms pound pounds lb lbs ounce ounces oz ton "
    "tons tonne tonnes ml l liter liters litre litres gallon gallons cup cups celsius fahrenheit kelvin "
    "second seconds minute minutes hour hours day days week weeks month months year years decade decades "
    "century centuries ms kb mb gb tb byte bytes bit bits hz khz mhz ghz w kw watt watts volt volts "
    "dollar dollars usd euro euros eur pound sterling gbp yen jpy cent cents percent "
    # dates
    "january february march april may june july august september october november december jan feb mar apr "
    "jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday today "
    "tomorrow yesterday tonight morning afternoon evening night weekend weekday spring summer autumn fall "
    "winter past future present ago next last previous current "
    # languages, scripts, formats
    "english french german spanish italian portuguese chinese japanese korean russian arabic hindi dutch "
    "swedish polish turkish greek latin hebrew python java javascript typescript rust go golang c cpp "
    "csharp ruby php kotlin swift sql bash html css json yaml xml csv markdown "
    # pronouns and persons
    "i me my mine myself you your yours yourself we us our ours he him his she her hers they them their "
    "theirs someone everyone anyone "
    # tense and modality ("who was" is not "who is")
    "is are was were be been being am do does did done can could would will shall has have had "
    # number words (digits are protected anyway)
    "zero eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty "
    "fifty sixty seventy eighty ninety hundred hundreds thousand thousands million millions billion "
    "billions trillion dozen dozens sixth seventh eighth ninth tenth hundredth thousandth "
    # arithmetic and set operations
    "add plus subtract minus multiply times divide divided sum product quotient difference remainder "
    "modulo square root power union intersection "
    # quantifiers, modality, comparison
    "all any every each most least more less fewer many few only always sometimes often rarely usually "
    "must should may might optional required both either one two three four five six seven eight nine ten "
    "first second third fourth fifth final single double half twice "
    # directions, relations, colours
    "to from into onto in on at by before after above below over under up down left right north south east west "
    "inside outside within between against versus vs and or but if unless than "
    "red green blue yellow black white orange purple pink brown grey gray"
)
#: Polarity axes: words on one axis with opposite signs are opposites (refused even if the embedder
#: finds them close); same axis and sign may still be near synonyms.
_AXES: dict[str, tuple[str, int]] = {}
for _axis, _pos, _neg in (
    (
        "valence",
        "good great excellent amazing awesome wonderful fantastic superb outstanding delicious nice pleasant "
        "happy glad love loved like liked enjoy enjoyed positive best better perfect brilliant favourable "
        "favorable satisfied helpful friendly beautiful pretty tasty fresh clean polite kind fun",
        "bad terrible awful horrible poor dreadful disgusting nasty unpleasant sad unhappy hate hated dislike "
        "disliked negative worst worse imperfect mediocre unfavourable unfavorable dissatisfied unhelpful "
        "rude unfriendly ugly bland stale dirty boring cruel",
    ),
    (
        "truth",
        "true correct right valid accurate agree yes pro pros",
        "false incorrect wrong invalid inaccurate disagree no con cons",
    ),
    (
        "size",
        "big large huge giant enormous tall wide thick heavy high higher highest maximum max largest "
        "biggest greater greatest increase increased rise raise grow",
        "small little tiny short narrow thin light "
        "low lower lowest minimum min smallest least lesser decrease decreased fall drop reduce shrink",
    ),
    ("strength", "strong stronger strongest powerful robust tough", "weak weaker weakest feeble fragile frail"),
    ("time", "early earlier earliest soon sooner", "late later latest"),
    ("order", "ascending ascend increasing", "descending descend decreasing"),
    ("speed", "fast quick quickly rapid faster fastest", "slow slowly slower slowest"),
    ("temperature", "hot warm warmer hotter", "cold cool colder cooler"),
    ("age", "new newer newest young younger modern recent", "old older oldest ancient outdated"),
    ("difficulty", "easy easier easiest simple", "hard harder hardest difficult tough"),
    ("cost", "cheap cheaper cheapest inexpensive affordable", "expensive pricey costly dearer"),
    ("safety", "safe secure legal allowed permitted", "dangerous unsafe insecure illegal forbidden banned"),
    (
        "outcome",
        "win won success succeed pass passed gain profit benefit benefits advantage advantages strength strengths",
        "lose lost failure fail failed loss risk risks disadvantage disadvantages weakness weaknesses",
    ),
    (
        "switch",
        "on enable enabled open start begin include accept allow add insert import encrypt encode "
        "buy increase approve approved upload uploads install lock compress",
        "off disable disabled close stop end exclude reject deny remove delete export decrypt "
        "decode sell disapprove deny refuse download downloads uninstall unlock decompress",
    ),
    ("gender", "male man men boy boys he", "female woman women girl girls she"),
):
    for _sign, _members in ((1, _pos), (-1, _neg)):
        for _w in _members.split():
            _AXES.setdefault(_w, (_axis, _sign))


class WordEmbedder(Protocol):
    def embed(self, texts: Sequence[str]) -> Any: ...


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the guard keeps of a prompt: the text, its normalised words, which of them are protected.

    `text` is the prompt as given (bounded by MAX_PROMPT_CHARS), so a replica that receives a shared entry
    rebuilds the same fingerprint; `key` is the normalised words joined by single spaces, equal for
    case/punctuation/filler-only changes (an exact hit needs no embedding). The words and sentences are read
    back from `key` when a check needs them: a cached entry holds about twice its prompt's size, not the
    sixteen times a tuple of word objects took (likewise the protected words)."""

    text: str
    key: str
    marked: str  # the protected words, space-separated (a set of thousands of names would outweigh the text)
    lengths: tuple[int, ...]  # words per sentence: order is compared within each, sentences in any order

    @property
    def protected(self) -> frozenset[str]:
        return frozenset(self.marked.split(" ")) if self.marked else frozenset()

    @property
    def words(self) -> list[str]:
        return self.key.split(" ")

    @property
    def sentences(self) -> list[list[str]]:
        words = self.words
        out: list[list[str]] = []
        start = 0
        for n in self.lengths:
            out.append(words[start : start + n])
            start += n
        return out


def normalise(text: str) -> str:
    """Case, compatibility forms, quotes and contractions folded, whitespace collapsed, polite head/tail cut."""
    t = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    t = " ".join(t.split())
    for pattern, repl in _CONTRACTIONS:
        t = pattern.sub(repl, t)
    t = _POLITE_HEAD.sub("", t, count=1)
    # The tail pattern is tried from every position, over runs of punctuation: on the last characters only,
    # so a prompt of 32,000 dots costs microseconds, not seconds (measured 22 s on the whole text).
    cut = max(len(t) - _TAIL_WINDOW, 0)
    return t[:cut] + _POLITE_TAIL.sub("", t[cut:])


def _opens(text: str, at: int) -> bool:
    """Is the word at `at` the first of a sentence, line or item (so its capital says nothing)?"""
    i = at - 1
    while i >= 0 and text[i] in " \t\r":
        i -= 1
    return i < 0 or text[i] in _OPENERS or text[i].isdigit()


def fingerprint(text: str) -> Fingerprint | None:
    """The prompt's fingerprint, or None for one too long to guard or with no words left once normalised
    (such a prompt is not cached and never hits)."""
    if len(text) > MAX_PROMPT_CHARS:
        return None
    original = unicodedata.normalize("NFKC", text).translate(_QUOTES)
    protected: set[str] = set()
    # Named entities, codes, e-mails, URLs: judged on the original (case matters to tell a name).
    for m in _TOKEN.finditer(original):
        kind, raw = m.lastgroup, m.group()
        low = raw.casefold()
        if kind in ("url", "email"):
            protected.add(low.rstrip(".,;:!?)"))
        elif kind == "sym":
            protected.add(low)
        elif kind == "num":
            protected.add(low)  # as written: 1,5 (a decimal comma) is not 15
        elif kind == "word":
            codeish = any(c.isdigit() for c in raw) and any(c.isalpha() for c in raw)
            caps = len(raw) > 1 and raw.isupper()
            name = raw[0].isupper() and raw != "I" and not _opens(original, m.start())
            if codeish or caps or name or (not raw.isascii() and raw[0].isupper()):
                protected.add(low)
    for m in _QUOTED.finditer(original):
        for w in _TOKEN.finditer((m.group(1) or m.group(2)).casefold()):
            protected.add(w.group())
    sentences = tuple(s for s in (_words(part) for part in _SENTENCES.split(normalise(text))) if s)
    words = tuple(w for s in sentences for w in s)
    if not words:  # "Thanks!", "???": nothing to compare, and every such prompt would share one key
        return None
    marked = " ".join(sorted(w for w in protected if w and " " not in w))
    return Fingerprint(text, " ".join(words), marked, tuple(len(s) for s in sentences))


def _words(text: str) -> tuple[str, ...]:
    words: list[str] = []
    for m in _TOKEN.finditer(text):
        raw = m.group()
        if m.lastgroup in ("num", "sym"):
            words.append(raw)  # as written: .5 is not 5, 1,5 is not 15
        elif m.lastgroup in ("url", "email"):
            words.append(raw.rstrip(".,;:!?)"))
        else:
            words.append(raw.strip(".'"))
    return tuple(w for w in words if w)


def _is_number(word: str) -> bool:
    return any(c.isdigit() for c in word)


def _refused_words(only_a: list[str], only_b: list[str]) -> Verdict | None:
    """The rule that a differing word breaks (negation, closed class, negating prefix, opposite polarity)."""
    for w in (*only_a, *only_b):
        if w in NEGATIONS:
            return Verdict(False, f"negation differs: {w!r}")
        if w in EXCLUSIVE:
            return Verdict(False, f"a closed-class word differs: {w!r}")
    for w in only_a:
        axis = _AXES.get(w)
        for v in only_b:
            if _negated(w, v) or _negated(v, w):
                return Verdict(False, f"a negating prefix differs: {w!r} / {v!r}")
            if axis is not None and _AXES.get(v) == (axis[0], -axis[1]):
                return Verdict(False, f"opposite polarity: {w!r} / {v!r}")
    return None


_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "de", "non", "anti", "counter", "mis")


def _negated(word: str, other: str) -> bool:
    """Is `word` `other` with a negating prefix (lock/unlock, compress/decompress, legal/illegal)?"""
    return any(word == p + other or word == p + "-" + other for p in _PREFIXES)


def _order(fp: Fingerprint, differing: set[str]) -> list[tuple[str, ...]]:
    """Each sentence's shared content words in order, the sentences in any order: "from english into
    french" is not "from french into english", but swapping two sentences is a paraphrase."""
    runs = (tuple(w for w in s if w not in FILLER and w not in differing) for s in fp.sentences)
    return sorted(r for r in runs if r)


def _protected_runs(fp: Fingerprint, protected: frozenset[str]) -> list[tuple[str, ...]]:
    """Each sentence's protected words in order, the sentences in any order: "convert USD to EUR" is not
    "convert EUR to USD", but two sentences swapped still ask the same."""
    runs = (tuple(w for w in s if w in protected or _is_number(w)) for s in fp.sentences)
    return sorted(r for r in runs if r)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer and why (for tests, the bench and `--explain`)."""

    agree: bool
    reason: str


SAME = Verdict(True, "same normalised text")


class PrecisionGuard:
    """Decides whether two prompts ask the same thing (module docstring); `embedder` judges synonyms."""

    def __init__(
        self,
        embedder: WordEmbedder | None = None,
        *,
        synonym_similarity: float = 0.85,
        max_swaps: int = 2,
        word_cache: int = 4096,
    ) -> None:
        if not 0.0 < synonym_similarity <= 1.0 or max_swaps < 0 or word_cache < 0:
            raise ValueError("synonym_similarity in (0, 1], max_swaps and word_cache >= 0")
        self.embedder = embedder
        self.synonym_similarity = synonym_similarity
        self.max_swaps = max_swaps
        self._word_cache = word_cache
        self._vectors: OrderedDict[str, Any] = OrderedDict()

    def agrees(self, a: Fingerprint, b: Fingerprint) -> bool:
        return self.check(a, b).agree

    def check(self, a: Fingerprint, b: Fingerprint) -> Verdict:
        if a.key == b.key:
            return SAME
        protected = a.protected | b.protected
        if _protected_runs(a, protected) != _protected_runs(b, protected):
            return Verdict(False, "numbers, names, codes or quoted words differ")
        words_a, words_b = a.words, b.words
        count_a = Counter(w for w in words_a if w not in FILLER)
        count_b = Counter(w for w in words_b if w not in FILLER)
        only_a = list((count_a - count_b).elements())
        only_b = list((count_b - count_a).elements())
        if _order(a, set(only_a)) != _order(b, set(only_b)):
            return Verdict(False, "the same words in another order within a sentence")
        if not only_a and not only_b:
            return Verdict(True, "same words")
        refused = _refused_words(only_a, only_b)
        if refused is not None:
            return refused
        if len(only_a) != len(only_b):
            return Verdict(False, "words added or removed")
        if len(only_a) > self.max_swaps:
            return Verdict(False, f"more than {self.max_swaps} words differ")
        if self.embedder is None:
            return Verdict(False, "words differ and there is no embedder to judge synonyms")
        return self._synonyms(only_a, only_b)

    def _synonyms(self, only_a: list[str], only_b: list[str]) -> Verdict:
        va = self._embed(only_a)
        vb = self._embed(only_b)
        sims = va @ vb.T
        left = set(range(len(only_b)))
        for i in np.argsort(-sims.max(axis=1)):  # the most certain pairs first
            j = max(left, key=lambda k: sims[i, k])
            if sims[i, j] < self.synonym_similarity:
                return Verdict(False, f"{only_a[i]!r} is not a near synonym of {only_b[j]!r} ({sims[i, j]:.2f})")
            left.discard(j)
        return Verdict(True, "near synonyms")

    def _embed(self, words: list[str]) -> Any:
        missing = [w for w in dict.fromkeys(words) if w not in self._vectors]
        if missing:
            assert self.embedder is not None
            vecs = np.asarray(self.embedder.embed(missing), dtype=np.float32)
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            for w, v in zip(missing, vecs / np.where(norms > 0, norms, 1.0), strict=True):
                self._vectors[w] = v
        rows = []
        for w in words:
            self._vectors.move_to_end(w)
            rows.append(self._vectors[w])
        while len(self._vectors) > self._word_cache:
            self._vectors.popitem(last=False)
        return np.stack(rows)
