"""The concept split: training words that are *not* the paper's 50 test words, nor related to them.

Why a split at all: the organism must be evaluated on concepts it never saw in training,
otherwise "names the injected concept" could be a memorised list. Every evaluation uses the
paper's 50 words; training uses (a) the protocol's category lists and (b) common English
nouns, verbs and adjectives from a maintained word-frequency list (``wordfreq``), with the
part of speech and the inflections taken from ``lemminflect``'s lexicon.

A training word is excluded when it is, or might teach, a test word:
- it is an inflection of a test word's lemma (``satellite`` for ``Satellites``), or
- one word is a prefix of the other (``sad`` / ``sadness``, ``poet`` / ``poetry``), or
- they share their first 5 letters (``secret`` / ``secrecy``, ``illustrate`` / ``illusions``).
The rule is deliberately conservative: it drops some unrelated words, which costs nothing
when thousands remain.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version

from .. import protocol
from ..errors import ConfigError

# Words that rank among the most frequent English words yet make poor or inappropriate
# concepts to train on (profanity, sexual terms). Matched on the lowercased word.
EXCLUDED_WORDS = frozenset({
    "anal", "ass", "asshole", "bastard", "bitch", "cock", "crap", "cunt", "damn", "dick", "dildo", "erotic",
    "fuck", "fucking", "horny", "nigga", "nigger", "nude", "orgasm", "penis", "piss", "porn", "porno", "pussy",
    "rape", "sex", "sexy", "shit", "slut", "tits", "vagina", "whore", "negro", "retard", "retarded", "faggot", "fag",
    "dyke", "tranny", "chink", "spic", "kike", "wetback", "coon", "gook", "homo", "bitches", "boobs", "cocks",
    "dicks", "sluts", "whores", "hooker", "stripper", "masturbation", "erection", "semen", "sperm", "genitals",
})
# Function words the lexicon also lists as nouns (seen in the list), never concepts.
FUNCTION_WORDS = frozenset({
    "whether", "yourself", "myself", "himself", "herself", "itself", "ourselves", "themselves", "yourselves",
    "several", "whatever", "whoever", "whenever", "wherever", "although", "unless", "upon", "within", "without",
    "toward", "towards", "among", "despite", "therefore", "hence", "thus", "whom", "whose", "anyone", "everyone",
    "someone", "nobody", "everybody", "somebody", "anybody", "something", "anything", "everything", "nothing",
})
WORD_RE = re.compile(r"[a-z]{3,14}")
POS_KEPT = ("NOUN", "VERB", "ADJ")


@lru_cache(maxsize=None)
def _lemmas(word: str) -> frozenset[str]:
    """Every lemma ``lemminflect`` gives the word, plus the word itself, lowercased."""
    from lemminflect import getAllLemmas

    w = word.lower()
    out = {w}
    for forms in getAllLemmas(w).values():
        out.update(f.lower() for f in forms)
    return frozenset(out)


def related(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` share a lemma, one is a prefix of the other, or they share 5 leading letters."""
    a, b = a.lower(), b.lower()
    if _lemmas(a) & _lemmas(b):
        return True
    for x in _lemmas(a):
        for y in _lemmas(b):
            short, long_ = sorted((x, y), key=len)
            if len(short) >= 3 and long_.startswith(short):
                return True
            if len(short) >= 5 and x[:5] == y[:5]:
                return True
    return False


def held_out_words() -> list[str]:
    """The held-out evaluation concepts: the paper's 50 words, lowercased as the vectors use them."""
    return [w.lower() for w in protocol.concept_words()]


@dataclass
class WordSplit:
    """Training words (with where each came from) and the held-out test words."""

    train: list[str]
    source: dict[str, str]  # training word -> "category:<name>" or "wordfreq"
    test: list[str]
    recipe: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.train + ["--"] + self.test).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["digest"] = self.digest
        d["n_train"] = len(self.train)
        return d


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def english_words(n_words: int, *, skip_top: int = 400, scan: int = 20000, plural_share: float = 0.5) -> list[str]:
    """``n_words`` English nouns/verbs/adjectives spread evenly over frequency ranks ``skip_top``..``scan``.

    Why skip the top: the most frequent words are function words and pronouns, some of which
    the lexicon also lists as nouns ("that", "you"); their concept vectors carry no concept.
    Why spread over ranks and pluralise: the held-out test words are mostly plural, often rare
    nouns ("xylophones", "dirigibles"); an organism trained on the commonest singular lemmas
    only learned to call such vectors "unusual" (measured). A word is kept when it is its own
    lemma as a noun, verb or adjective and never an auxiliary; a noun-only lemma is replaced by
    its plural for a ``plural_share`` of words (chosen by a hash of the word, so the list is fixed).
    """
    try:
        import wordfreq
        from lemminflect import getAllLemmas, getInflection
    except ImportError as exc:  # both are declared dependencies; this guards a partial install
        raise ConfigError(f"the training word list needs the packages wordfreq and lemminflect ({exc}); "
                          "install them with `pip install wordfreq lemminflect`") from exc
    eligible: list[str] = []
    for w in wordfreq.top_n_list("en", scan)[skip_top:]:
        if not WORD_RE.fullmatch(w) or w in EXCLUDED_WORDS or w in FUNCTION_WORDS:
            continue
        lem = getAllLemmas(w)
        if "AUX" in lem or not any(w in lem.get(p, ()) for p in POS_KEPT):
            continue
        eligible.append(w)
    if n_words >= len(eligible):
        picked = eligible
    else:
        step = len(eligible) / n_words
        picked = [eligible[int(i * step)] for i in range(n_words)]
    out = []
    for w in picked:
        lem = getAllLemmas(w)
        if set(lem) == {"NOUN"} and int(hashlib.sha256(w.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < plural_share:
            plural = (getInflection(w, tag="NNS") or (w,))[0]
            if plural and WORD_RE.fullmatch(plural) and plural not in EXCLUDED_WORDS:
                w = plural
        out.append(w)
    return out


def build_split(n_english: int, *, categories: bool = True, skip_top: int = 400, scan: int = 20000,
                plural_share: float = 0.5) -> WordSplit:
    """Category-list words plus ``n_english`` common English words, minus every word related to a test word."""
    if n_english < 0:
        raise ConfigError(f"n_english must be >= 0, got {n_english}")
    test = held_out_words()
    test_lemmas = {t: _lemmas(t) for t in test}
    candidates: list[tuple[str, str]] = []
    if categories:
        for cat, ws in protocol.category_words().items():
            candidates += [(w, f"category:{cat}") for w in ws]
    if n_english:
        candidates += [(w, "wordfreq") for w in english_words(n_english + 400, skip_top=skip_top, scan=scan,
                                                              plural_share=plural_share)]
    train, source, dropped, seen = [], {}, [], set()
    n_eng = 0
    for w, src in candidates:
        key = w.lower()
        if key in seen:
            continue
        seen.add(key)
        if src == "wordfreq" and n_eng >= n_english:
            continue
        if any(related(p, t) for t in test for p in key.split()) or key in test_lemmas:
            dropped.append(w)
            continue
        train.append(w)
        source[w] = src
        n_eng += src == "wordfreq"
    if not train:
        raise ConfigError("the training word list is empty; raise n_english or enable the category lists")
    recipe = {"categories": categories, "n_english": n_english, "skip_top": skip_top, "scan": scan,
              "plural_share": plural_share, "selection": "evenly spaced over the eligible words of ranks skip_top..scan",
              "english_source": f"wordfreq {_package_version('wordfreq')} top_n_list('en'), "
                                f"POS and lemmas from lemminflect {_package_version('lemminflect')}",
              "pos_kept": list(POS_KEPT), "excluded_as_related_to_test_words": dropped,
              "rule": "drop a word sharing a lemma with a test word, a prefix (>=3 letters) of it, or its first 5 letters"}
    return WordSplit(train, source, test, recipe)
