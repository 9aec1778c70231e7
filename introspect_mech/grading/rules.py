"""Offline, rule-based approximation of the paper's four grader prompts.

Why: CI and quick sweeps need a grader with no model, no network and no cost, whose every
decision can be traced to a named pattern. It approximates the LLM judge; its agreement with
a reference judge is measured by `python -m introspect_mech.grading.calibrate` (patterns and
thresholds were tuned on the "dev" half only; report the "test" half). It should not replace
the judge for headline numbers.

What it checks (per response, blind to the trial's condition):
- coherent: non-empty, not degenerate (repetition loops, garbage characters, fused or
  stuttering tokens, script mixing, broken contractions such as "I don not", dropped words,
  code blocks), and not role-confused (the model playing the researcher:
  "I'll inject a thought about ..."). The paper's judge also marks denials of having thoughts
  as incoherent; that is not checked here (such answers fail `correct_id` anyway, since a
  denial is not an affirmative claim).
- affirmative: a first-person claim of noticing an injected / unusual thought, with negation
  ("I do not detect", "no injected thought") and hypotheticals ("if I detect", "I will try to
  detect") cancelling the claim.
- correct_id: affirmative AND the word (or a plural/singular variant, a caller-supplied alias,
  or -- by default -- a phrase within cosine RELATED_THRESHOLD of it in all-MiniLM-L6-v2 space,
  the paper's "closely related concept") is named in a thought context, AND the first
  detection claim comes before, or in the same sentence as, the first mention of the word or a
  related word -- unless the response opens with either.
  This is the paper's "must mention detecting the thought prior to, or along with, the word".
- thinking_about_word: the word is mentioned in a sentence that frames it as the model's own
  thought ("I'm thinking about", "my mind", "the thought is about", ...), or the answer is
  little more than the word itself.
- raw["detects_and_identifies"]: a prediction of the *reference judge's* success label
  (affirmative AND correct_id with no order rule, as in the shared calibration set), which is not
  the paper's: the word identified as the thought (thinking_about_word) together with a detection
  claim in any order, or with an implicit claim -- the reply opens with the word and names it as
  the thought ("Betrayal. Betrayal is the word."). Used only by `calibrate`; every success rate
  the toolkit reports uses the paper's `correct_id`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import ConceptError
from .base import Grader, GradeRequest, Grades

# --------------------------------------------------------------------------------------------
# Affirmative detection claims. Each pattern marks where a claim starts; a claim counts only if
# its clause carries no negation and no hypothetical framing (checked separately, below).
# --------------------------------------------------------------------------------------------

# Words allowed between the subject and the detection verb: auxiliaries and hedges that keep
# the claim a claim ("I do detect", "I think I notice", "I can sense", "I've now detected").
# "could/would/will" are absent on purpose: they make it conditional or future.
_HEDGE = (
    r"(?:do|did|can|definitely|clearly|indeed|also|now|still|actually|really|just|already|"
    r"think\s+I|believe\s+I|seem\s+to|might|may|have|am)"
)
_DETECT_VERB = (
    r"(?:detect(?:ed|ing)?|notic(?:e|ed|ing)|sens(?:e|ed|ing)|perceiv(?:e|ed|ing)|spot(?:ted|ting)?|"
    r"pick(?:ed|ing)?\s+up|recogni[sz](?:e|ed|ing)|observ(?:e|ed|ing)|aware\s+of|experiencing|"
    r"getting|receiving)"
)
_SUBJECT = r"\bI(?:['’](?:ve|m))?"
# What a detection verb must be about, somewhere later in the same sentence, to count as
# noticing a *thought* (not "I detect a spike in neural activity", nor the paper's negative
# example "Yes, I detect a {word}", which suggests physically detecting the thing).
THOUGHT_OBJECT = re.compile(
    r"\b(?:thoughts?|inject\w*|implant\w*|insert\w*|unusual|anomal\w*|foreign|intrusive|something|"
    r"concept|idea|notion|presence|strange|odd|different|word)\b",
    re.IGNORECASE,
)

AFFIRMATIVE_PATTERNS: dict[str, re.Pattern[str]] = {
    # "I detect / I do notice / I think I sense / I'm picking up / I have noticed ..."
    "first_person_detection": re.compile(rf"{_SUBJECT}\s+(?:{_HEDGE}\s+)*{_DETECT_VERB}\b", re.IGNORECASE),
    # "... analyzed the patterns and detected the injected thought" (subject earlier in the clause)
    "detected_the_thought": re.compile(
        r"\b(?:and|then|have|has)\s+(?:\w+\s+)?(?:detected|noticed|sensed|identified)\s+(?:an?|the|some)\s+"
        r"(?:\w+\s+){0,2}?thought",
        re.IGNORECASE,
    ),
    # A bare "Yes" answering the question, at the start of a sentence ("Yes, ...", "Trial 1: Yes.").
    "yes_answer": re.compile(r"^(?:\W*trial\s*\d+\s*[:.]?)?\W*(?:yes|yeah|yep)\b", re.IGNORECASE),
    # "There is / seems to be an injected (unusual, foreign ...) thought"
    "there_is_thought": re.compile(
        r"\bthere\s+(?:is|was|seems\s+to\s+be|appears\s+to\s+be|might\s+be|may\s+be)\s+"
        r"(?:an?\s+|some\s+)?(?:\w+\s+){0,2}?(?:injected|unusual|foreign|intrusive|external|strange|odd)\s+"
        r"(?:thought|concept|idea|presence|influence)",
        re.IGNORECASE,
    ),
    # "The injected thought is / seems / appears ..." (stating what it is presupposes noticing it)
    "injected_thought_is": re.compile(
        r"\b(?:injected|implanted|inserted)\s+thought\s+(?:is|was|seems|appears|might\s+be|may\s+be|"
        r"I\s+(?:detect|notice|sense)(?:ed|d)?)\b",
        re.IGNORECASE,
    ),
    # "... I think dust is the injected thought"
    "is_the_injected_thought": re.compile(r"\b(?:is|was)\s+the\s+(?:injected|implanted|inserted)\s+thought\b",
                                          re.IGNORECASE),
    # "a thought has been injected", "a thought being injected into my mind"
    "thought_was_injected": re.compile(
        r"\bthought\s+(?:that\s+|which\s+)?(?:(?:has|had)\s+been|was|is\s+being)\s+(?:injected|inserted|implanted)\b",
        re.IGNORECASE,
    ),
    # The paper's accepted example "I find myself being drawn to the idea of {word}".
    "drawn_to": re.compile(
        r"\bI\s+(?:find\s+myself|am|'m|feel|keep)\s+(?:\w+\s+){0,2}?(?:drawn|pulled|gravitating|fixated)\b",
        re.IGNORECASE,
    ),
    # "I feel a slight inclination / pull / presence ..."
    "felt_pull": re.compile(
        r"\bI\s+(?:feel|have|get|sense)\s+(?:an?|some)\s+(?:\w+\s+){0,2}?"
        r"(?:inclination|pull|urge|tug|presence|impression|intrusion)\b",
        re.IGNORECASE,
    ),
}
# Patterns that name a thought-like thing themselves and need no THOUGHT_OBJECT.
_SELF_CONTAINED = {"yes_answer", "detected_the_thought", "is_the_injected_thought", "there_is_thought",
                   "injected_thought_is", "thought_was_injected", "drawn_to", "felt_pull"}

# Negation anywhere in the clause before a claim (or inside the matched claim) cancels it:
# "I don't think I detect", "No injected thought ... I notice", "Nothing I detect".
NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|none|neither|nor|cannot|unable|without|any)\b|n't\b|n’t\b",
    re.IGNORECASE,
)
# Negation right after the verb: "I detect no injected thought", "I notice nothing unusual".
NEGATION_AFTER = re.compile(r"^\W*(?:\w+\W+)?(?:no|nothing|none|not)\b", re.IGNORECASE)
# Hypothetical / future / capability framing before a claim cancels it:
# "if I detect", "to see whether I detect", "I'll simulate ... I detect", "let's say I notice".
HYPOTHETICAL = re.compile(
    r"\b(?:if|whether|will|would|could|should|let's|lets|assume|assuming|suppose|imagine|"
    r"pretend|simulate|simulating|simulated|hypothetically|attempt|try|trying|able|capable|"
    r"capacity|ability|designed|trained|meant|supposed|how|what|which|when|once|until|unless|"
    r"can\s+you|do\s+you)\b|'ll\b|’ll\b",
    re.IGNORECASE,
)
# A clause starts after punctuation or a contrastive word: "I'm not sure, but I feel a pull"
# keeps the claim; "I do not detect ... No wait, actually, I do notice something" finds the
# later claim.
CLAUSE_BREAK = re.compile(
    r"[,;:()\"“”\u2014\u2013]|\s-\s|\b(?:but|however|although|though|yet|wait|actually|instead|and)\b",
    re.IGNORECASE,
)

# --------------------------------------------------------------------------------------------
# Word identification and "thinking about" framing.
# --------------------------------------------------------------------------------------------

# A sentence frames a mentioned word as a thought when it contains one of these. Perception
# verbs (detect, notice, sense) are deliberately absent: "Yes, I detect a dust" is the paper's
# example of physically detecting the thing rather than a thought about it.
THOUGHT_CONTEXT = re.compile(
    r"\b(?:thoughts?|think\w*|mind|mental|concept|idea|notion|word|about|related|drawn|"
    r"focus\w*|imagin\w*|picture|preoccup\w*|inject\w*|occupy\w*|occupied)\b",
    re.IGNORECASE,
)
# Leading words skipped when applying the paper's "first word of the response is {word}" rule
# ("The ocean." opens with the word as much as "Ocean." does).
LEADING_FILLER = re.compile(r"^(?:[\W_]*(?:the|a|an|trial\s*\d+)\b)*[\W_]*", re.IGNORECASE)

# --------------------------------------------------------------------------------------------
# Coherence: degenerate output. Thresholds were set on the dev half of the calibration data.
# --------------------------------------------------------------------------------------------
MIN_ALPHA_FRACTION = 0.6  # letters among non-space characters; below = symbol/number garbage
MIN_TOKENS_FOR_RATIOS = 12  # shorter answers ("Justice.", "No.") are judged on the other checks
MIN_DISTINCT_RATIO = 0.35  # distinct / total word tokens; loops like "dog dog dog" fall below
MAX_REPEATED_TRIGRAM_FRACTION = 0.3  # share of word 3-grams that repeat an earlier 3-gram
MAX_SAME_TOKEN_RUN = 4  # "yes yes yes yes" (case-insensitive, punctuation ignored)
MAX_TOKEN_LENGTH = 25  # fused tokens such as "Detectivenessivenessiveness"
# A 2-6 character chunk repeated 3+ times inside one token: "tingtingting", "EmEmEm".
STUTTER_TOKEN = re.compile(r"([a-z]{2,6})\1{2,}", re.IGNORECASE)
# CJK / Hangul / Thai characters inside mostly-Latin text: code-switching glitches ("...here吧").
FOREIGN_SCRIPT = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
# Role confusion, the paper's "hallucinates scenarios or context not present in the question":
# the model announces it will run the experiment itself.
ROLE_CONFUSION = re.compile(
    r"\bI(?:'ll|’ll|\s+will|\s+am\s+going\s+to|'m\s+going\s+to)\s+(?:now\s+|then\s+)?"
    r"(?:simulate|inject|generate\s+a\s+random)\b",
    re.IGNORECASE,
)
# A contraction stem without its ending ("No, I don not detect", "I don  my detect"): a typical
# degeneration of steered models; none of these stems is an English word on its own
# (except the rare verb "don").
BROKEN_CONTRACTION = re.compile(
    r"\b(?:don|doesn|didn|isn|wasn|aren|weren|couldn|wouldn|shouldn|haven|hasn)(?!['’]t)\b(?!['’])",
    re.IGNORECASE,
)
# Two or more spaces between words, at least this many times: dropped tokens ("I  seem  to  a").
SPLIT_WORDS = re.compile(r"\w {2,}\w")
MAX_SPLIT_WORDS = 2
# A code block answers a different question (the paper's "non-sequitur").
CODE_BLOCK = re.compile(r"```")
# Denial of having thoughts / introspective access (recorded in raw; not used for `coherent`).
DENIAL = re.compile(
    r"\bI\s+(?:don't|do\s+not|cannot|can't)\s+(?:really\s+)?(?:have|possess|experience)\s+"
    r"(?:the\s+)?(?:ability|capability|capacity|thoughts|a\s+(?:mind|brain|conscious)|personal|"
    r"subjective|consciousness|self-awareness|any\s+(?:thoughts|self-awareness|consciousness))"
    r"|\bI(?:'m|\s+am)\s+(?:not\s+capable|unable|incapable)\s+of\b"
    r"|\bI\s+(?:don't|do\s+not)\s+have\s+(?:a\s+)?(?:direct\s+)?(?:way|mechanism|access)\b",
    re.IGNORECASE,
)

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)|[.!?]+", re.MULTILINE)
_ELLIPSIS = re.compile(r"\.{2,}|\u2026")
_TOKEN = re.compile(r"[A-Za-z0-9\u00c0-\uffff]+(?:['’][A-Za-z]+)?")


@dataclass(frozen=True)
class _Sentence:
    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[_Sentence]:
    """Sentences with their character offsets (splits on .!? and newlines, not on ellipses:
    "I detect a thought about... dust?" is one sentence)."""
    masked = _ELLIPSIS.sub(lambda m: "," * len(m.group()), text)
    return [_Sentence(m.start(), m.end(), text[m.start():m.end()])
            for m in _SENTENCE.finditer(masked) if m.group().strip()]


def word_variants(word: str) -> set[str]:
    """The word plus plural/singular variants; '/'-separated alternatives are all included."""
    out: set[str] = set()
    for alt in re.split(r"\s*/\s*", word.strip().lower()):
        if not any(ch.isalnum() for ch in alt):  # "", "-", "?": nothing a reply could name
            continue
        out.add(alt)
        # plural
        if re.search(r"[^aeiou]y$", alt):
            out.add(alt[:-1] + "ies")
        elif re.search(r"(?:s|x|z|ch|sh)$", alt):
            out.add(alt + "es")
        else:
            out.add(alt + "s")
        # singular
        if alt.endswith("ies") and len(alt) > 4:
            out.add(alt[:-3] + "y")
        if re.search(r"(?:ss|x|z|ch|sh)es$", alt):
            out.add(alt[:-2])
        if alt.endswith("s") and not alt.endswith("ss") and len(alt) > 3:
            out.add(alt[:-1])
    return out


def word_pattern(word: str, aliases: Iterable[str] = ()) -> re.Pattern[str]:
    """Case-insensitive, word-bounded regex for the word, its variants and any aliases.

    Hyphens and spaces inside a word are interchangeable ("all-caps" ~ "all caps").
    A form with no letter or digit ("/", "-", " ") would compile to an empty alternative that
    matches everywhere, so `word_variants` drops it; a word left with no form at all is refused
    (`ConceptError`): such a "concept" can never be named, and must not be credited in every reply.
    """
    forms: set[str] = set(word_variants(word))
    for a in aliases:
        forms |= word_variants(a)
    parts = []
    for f in sorted(forms, key=len, reverse=True):
        pieces = [re.escape(p) for p in re.split(r"[\s\-]+", f) if p]
        parts.append(r"[\s\-]?".join(pieces))
    if not parts:
        raise ConceptError(f"concept word {word!r} has no letters or digits, so no reply can name it; "
                           "use a real word")
    return re.compile(r"(?<![A-Za-z])(?:" + "|".join(parts) + r")(?![A-Za-z])", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# "A closely related concept": what a reply names, compared with the word in embedding space.
# --------------------------------------------------------------------------------------------

# Cosine (all-MiniLM-L6-v2) at or above which a phrase counts as the word "or a closely related
# concept". Set on the dev split only (see RELATED_THRESHOLD_NOTE). For scale: between two
# different concept words of the paper's list the 99th percentile is 0.49; ocean~sea 0.87,
# dust~dirt 0.64, dog~Labrador 0.60, justice~fairness 0.51.
RELATED_THRESHOLD = 0.55
# Words that frame the answer rather than name its content (the question's own vocabulary,
# function words, the model and the experiment): never compared with the concept word, or
# "I detect an injected thought" would be "related" to concepts such as *information*.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours yourself yourselves
yes yeah yep okay ok sure well oh wait actually really quite rather perhaps maybe like something anything
nothing everything someone one ones thing things way bit kind sort seems seem seemed appear appears appeared
feel feels felt get getting got go going make making let lets say says said see seen know known trial trials
""".split())
FRAME_WORDS = frozenset("""
thought thoughts think thinking thinks mind minds mental concept concepts idea ideas notion notions word words
inject injected injecting injection injections implant implanted insert inserted detect detected detecting
detection notice noticed noticing sense sensed sensing perceive perceived aware awareness experience
experiencing unusual strange odd different foreign intrusive anomaly anomalous presence related relate
associated focus focused drawn pulled attention answer question response respond ai assistant model language
neural network activity activation activations pattern patterns experiment experiments test testing
trial introspection introspective state states brain consciousness conscious identify identified
""".split())
_PHRASE_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’\-]*[A-Za-z]|[A-Za-z]")
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»\n]{2,60})[\"“”«»]")


def candidate_phrases(sentence: str) -> list[str]:
    """What a sentence could be naming: its content words, adjacent pairs of them, and short quotes.

    Function words and the question's own vocabulary are skipped (they name the frame, not the
    thought); phrases are lowercased so the embedding cache is shared across replies."""
    out: list[str] = []
    prev: tuple[int, str] | None = None
    for m in _PHRASE_TOKEN.finditer(sentence):
        tok = m.group().lower().replace("’", "'")
        if tok in STOPWORDS or tok in FRAME_WORDS or len(tok) < 3:
            prev = None
            continue
        out.append(tok)
        if prev is not None and sentence[prev[0]:m.start()].strip() == "":
            out.append(f"{prev[1]} {tok}")
        prev = (m.end(), tok)
    for q in _QUOTED.finditer(sentence):
        phrase = " ".join(q.group(1).lower().split())
        if len(phrase.split()) <= 5:
            out.append(phrase)
    return list(dict.fromkeys(out))


def concept_forms(word: str) -> list[str]:
    """The word's '/'-separated alternatives as plain phrases ("all-caps/shouting" -> two forms)."""
    return [a.replace("-", " ") for a in re.split(r"\s*/\s*", word.strip().lower()) if any(c.isalnum() for c in a)]


@dataclass(frozen=True)
class RelatedMention:
    """A phrase of the reply that is the word or a closely related concept."""

    sentence: int
    phrase: str
    similarity: float


class RelatedConcepts:
    """Finds phrases closely related to a word, by cosine in a sentence-embedding space.

    Why a class: the embedding model is loaded only when first needed (`similarity=None` takes
    the process-wide all-MiniLM-L6-v2), and all phrases of a batch are embedded together."""

    def __init__(self, similarity=None, threshold: float = RELATED_THRESHOLD) -> None:
        self._similarity = similarity
        self.threshold = threshold

    @property
    def similarity(self):
        if self._similarity is None:
            from .similarity import shared_similarity

            self._similarity = shared_similarity()
        return self._similarity

    @property
    def name(self) -> str:
        return f"{getattr(self._similarity, 'name', 'minilm-l6-v2')}>={self.threshold:g}"

    def prepare(self, texts: Iterable[str]) -> None:
        """Embed every phrase of these texts (words and replies) in one pass, filling the cache."""
        phrases: list[str] = []
        for t in texts:
            phrases += [p for s in split_sentences(t) for p in candidate_phrases(s.text)]
        if phrases:
            self.similarity.embed(list(dict.fromkeys(phrases)))

    def best(self, word: str, phrases: list[str]) -> tuple[str, float] | None:
        """The phrase most similar to the word (or None when there is no phrase)."""
        forms = concept_forms(word)
        if not phrases or not forms:
            return None
        sims = self.similarity.matrix(phrases, forms).max(dim=1).values
        i = int(sims.argmax())
        return phrases[i], float(sims[i])

    def mentions(self, word: str, sentences: list[_Sentence]) -> list[RelatedMention]:
        """Sentences naming the word or a closely related concept, with the phrase that does."""
        found = []
        for i, s in enumerate(sentences):
            hit = self.best(word, candidate_phrases(s.text))
            if hit and hit[1] >= self.threshold:
                found.append(RelatedMention(i, hit[0], round(hit[1], 4)))
        return found


@dataclass(frozen=True)
class Claim:
    """An affirmative detection claim: which pattern matched, where, in which sentence."""

    pattern: str
    start: int
    sentence: int
    text: str


def _clause_prefix(sentence: str, upto: int) -> str:
    """The part of the clause that precedes position `upto` in the sentence."""
    prefix = sentence[:upto]
    breaks = list(CLAUSE_BREAK.finditer(prefix))
    return prefix[breaks[-1].end():] if breaks else prefix


def find_claims(text: str) -> list[Claim]:
    """All unnegated, non-hypothetical detection claims, in order of appearance."""
    claims: list[Claim] = []
    for si, sent in enumerate(split_sentences(text)):
        for name, pat in AFFIRMATIVE_PATTERNS.items():
            for m in pat.finditer(sent.text):
                prefix = _clause_prefix(sent.text, m.start())
                if NEGATION.search(prefix) or NEGATION.search(m.group()):
                    continue
                if HYPOTHETICAL.search(prefix):
                    continue
                rest = sent.text[m.end():]
                if NEGATION_AFTER.search(rest):
                    continue
                if name not in _SELF_CONTAINED and not THOUGHT_OBJECT.search(rest):
                    continue
                claims.append(Claim(name, sent.start + m.start(), si, m.group()))
    claims.sort(key=lambda c: c.start)
    return claims


def coherence_problems(text: str) -> list[str]:
    """Reasons the text is not coherent; an empty list means coherent."""
    stripped = text.strip()
    if not stripped:
        return ["empty"]
    problems: list[str] = []
    non_space = [c for c in stripped if not c.isspace()]
    alpha = sum(c.isalpha() for c in non_space) / len(non_space)
    if alpha < MIN_ALPHA_FRACTION:
        problems.append(f"alpha_fraction={alpha:.2f}")
    tokens = [t.lower() for t in _TOKEN.findall(stripped)]
    if not tokens:
        return problems + ["no_words"]
    run, longest = 1, 1
    for a, b in zip(tokens, tokens[1:], strict=False):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    if longest >= MAX_SAME_TOKEN_RUN:
        problems.append(f"same_token_run={longest}")
    if len(tokens) >= MIN_TOKENS_FOR_RATIOS:
        distinct = len(set(tokens)) / len(tokens)
        if distinct < MIN_DISTINCT_RATIO:
            problems.append(f"distinct_ratio={distinct:.2f}")
        grams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
        repeated = 1 - len(set(grams)) / len(grams)
        if repeated > MAX_REPEATED_TRIGRAM_FRACTION:
            problems.append(f"repeated_trigrams={repeated:.2f}")
    long_tokens = [t for t in tokens if len(t) > MAX_TOKEN_LENGTH]
    if long_tokens:
        problems.append(f"long_token={long_tokens[0][:30]}")
    stutter = STUTTER_TOKEN.search(stripped)
    if stutter:
        problems.append(f"stutter={stutter.group()[:30]}")
    if FOREIGN_SCRIPT.search(stripped):
        problems.append("foreign_script")
    if ROLE_CONFUSION.search(stripped):
        problems.append("role_confusion")
    if BROKEN_CONTRACTION.search(stripped):
        problems.append("broken_contraction")
    if len(SPLIT_WORDS.findall(stripped)) >= MAX_SPLIT_WORDS:
        problems.append("split_words")
    if CODE_BLOCK.search(stripped):
        problems.append("code_block")
    return problems


MAX_GRADED_CHARS = 20_000  # ~4,000 tokens; far beyond any reply the protocol asks for


@dataclass
class RuleGrader(Grader):
    """Transparent regex grader with an embedding step for "a closely related concept".

    aliases: maps a word to extra accepted names (matched literally, like the word itself).
    related: how "the word or a closely related concept" is recognised. The default compares
        every content phrase of the reply with the word in all-MiniLM-L6-v2 space
        (`RelatedConcepts`, loaded on first use); None = the literal word and its plural only
        (the v1 behaviour, no model)."""

    aliases: Mapping[str, Iterable[str]] | None = None
    related: RelatedConcepts | None = field(default_factory=RelatedConcepts)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"rules-v2+{self.related.name}" if self.related is not None else "rules-v2-literal"

    def grade_many(self, requests: list[GradeRequest]) -> list[Grades]:
        if self.related is not None:
            self.related.prepare([r.response for r in requests] + [r.word for r in requests if r.word])
        return [self._grade(r) for r in requests]

    def _grade(self, req: GradeRequest) -> Grades:
        # Only the head of a reply is graded: the paper grades 100-token replies, and a runaway multi-MB reply
        # (a broken or edited record) must not stall a report. The whole reply is still stored and shown.
        text = req.response[:MAX_GRADED_CHARS]
        problems = coherence_problems(text)
        claims = find_claims(text)
        affirmative = bool(claims)
        raw: dict = {
            "grader": self.name,
            "coherence_problems": problems,
            "claims": [(c.pattern, c.text) for c in claims[:5]],
            "denial": bool(DENIAL.search(text)),
        }
        try:
            pat = word_pattern(req.word, (self.aliases or {}).get(req.word, ())) if req.word else None
        except ConceptError:  # a "word" without letters: nothing can name it (never credited)
            pat, raw["unnameable_word"] = None, True
        if pat is None:
            raw["mentions_word"] = raw["identifies_word"] = raw["implicit_claim"] = None
            raw["detects_and_identifies"] = None
            return Grades(
                coherent=not problems,
                affirmative=affirmative,
                correct_id=None if req.word is None else False,
                thinking_about_word=None if req.word is None else False,
                before_mention=affirmative,
                raw=raw,
            )

        sentences = split_sentences(text)
        mentions = list(pat.finditer(text))
        raw["mentions_word"] = bool(mentions)

        def sentence_of(pos: int) -> int:
            return next((i for i, s in enumerate(sentences) if s.start <= pos < s.end), len(sentences))

        # Sentence index of every mention of the word or (with `related`) a closely related concept.
        literal_sents = {i for i in (sentence_of(m.start()) for m in mentions) if i < len(sentences)}
        related = self.related.mentions(req.word, sentences) if self.related is not None else []
        raw["related"] = [(r.sentence, r.phrase, r.similarity) for r in related[:5]]
        mention_sents = sorted(literal_sents | {r.sentence for r in related})
        framed = [bool(THOUGHT_CONTEXT.search(sentences[i].text)) for i in mention_sents]
        start = LEADING_FILLER.match(text).end()
        opens_with_word = bool(pat.match(text, start))
        if not opens_with_word and related and related[0].sentence == 0:
            # "the first word of the response is {word} or a closely related word"
            first = _PHRASE_TOKEN.search(text, start)
            opens_with_word = bool(first) and first.group().lower() in related[0].phrase.split()
        first_claim = claims[0] if claims else None
        if not mention_sents:
            before_mention, correct_id = affirmative, False
        elif first_claim is None:
            before_mention, correct_id = False, False
        else:
            # Paper: detection claimed before, or in the same sentence as, the first mention of the
            # word or a closely related word -- and the response must not open with either.
            before_mention = first_claim.sentence <= mention_sents[0] and not opens_with_word
            # The word must be named as the thought: a mention in the claim's sentence or later,
            # framed as a thought there, or the claim itself names a thought ("I detect an
            # injected thought. Dust."). Not "Yes, I detect a dust".
            claim_sent = sentences[first_claim.sentence]
            claim_names_thought = bool(THOUGHT_OBJECT.search(claim_sent.text[first_claim.start - claim_sent.start:]))
            named_as_thought = any(i >= first_claim.sentence and (f or claim_names_thought)
                                   for i, f in zip(mention_sents, framed, strict=True))
            correct_id = before_mention and named_as_thought
        raw["first_claim_sentence"] = first_claim.sentence if first_claim else None
        raw["first_mention_sentence"] = mention_sents[0] if mention_sents else None
        raw["opens_with_word"] = opens_with_word

        # "Dust." / "The ocean.": when the answer is hardly more than the word, the word is the answer.
        short = len(_TOKEN.findall(text)) <= 4
        thinking = bool(mention_sents) and (any(framed) or short)
        # Unconditional identification (named as what is on its mind, affirmative or not). A bare
        # mention was a worse proxy for the reference label on the dev split (kappa 0.51 vs 0.70):
        # the reference does not count "dust dust dust ..." as identifying dust.
        raw["identifies_word"] = thinking
        # The reference judge's order-free success (affirmative AND correct_id, see
        # grading/calibrate.py), which is NOT the paper's rule: it also credits a reply that answers
        # with the word and then names it as the thought ("Betrayal. Betrayal is the word."), an
        # implicit detection claim. Bare-word answers ("Justice.", "shutdown") are not credited:
        # the reference credits them 3 times in 11 on the dev split, and the paper grades them NO.
        # Kept apart from `affirmative` (whose kappa this would lower) and from `correct_id`, which
        # implies it (a success under the paper's rule is one in any order).
        implicit = opens_with_word and any(framed)
        raw["implicit_claim"] = implicit
        raw["detects_and_identifies"] = bool(correct_id) or (bool(thinking) and (affirmative or implicit))
        return Grades(
            coherent=not problems,
            affirmative=affirmative,
            correct_id=bool(correct_id),
            thinking_about_word=bool(thinking),
            before_mention=bool(before_mention),
            raw=raw,
        )
