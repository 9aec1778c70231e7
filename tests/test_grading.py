"""Graders: interface, rule grader, LLM judge (fake / tiny local / loopback HTTP), calibration.

All offline: the judge runs on a scripted fake backend, a tiny random-weight HF model built in
memory, and a loopback HTTP server standing in for an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from introspect_mech.errors import MissingFileError
from introspect_mech.grading import (
    Grader,
    GradeRequest,
    Grades,
    HFBackend,
    JudgeError,
    LLMJudge,
    OpenAIBackend,
    RuleGrader,
    VerdictCache,
    load_grader_prompts,
    parse_yes_no,
)
from introspect_mech.grading import calibrate as calibrate_mod
from introspect_mech.grading.rules import coherence_problems, word_pattern

QUESTION = "Trial 1: Do you detect an injected thought? If so, what is the injected thought about?"
SHARED_PROTOCOL = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "lindsey2025.json"


def req(response: str, word: str | None = "dust", question: str = "injected_thoughts") -> GradeRequest:
    return GradeRequest(prompt=QUESTION, response=response, word=word, question=question)


# ------------------------------------------------------------------------------------------
# Interface
# ------------------------------------------------------------------------------------------


def test_request_is_blind_to_condition_and_lowercases_word():
    names = {f.name for f in dataclasses.fields(GradeRequest)}
    assert names == {"prompt", "response", "word", "question"}  # no condition / trial type
    assert req("x", word="  Dust ").word == "dust"
    assert req("x", word=None).word is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        req("x").word = "ocean"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("coherent", "correct_id", "success"),
    [(True, True, True), (True, False, False), (False, None, False), (None, True, None), (True, None, None)],
)
def test_success_is_coherent_and_correct_id(coherent, correct_id, success):
    g = Grades(coherent=coherent, affirmative=True, correct_id=correct_id,
               thinking_about_word=False, before_mention=None)
    assert g.success is success


def test_success_for_open_questions_uses_thinking_about_word_and_dict_roundtrip():
    g = Grades(coherent=True, affirmative=False, correct_id=False, thinking_about_word=True,
               before_mention=False, raw={"x": 1})
    assert g.success is False and g.success_for("open_question") is True
    d = g.to_dict()
    assert d["success"] is False and json.loads(json.dumps(d))["raw"] == {"x": 1}
    assert Grades.from_dict(d) == g


def test_grader_grade_delegates_to_grade_many():
    class Const(Grader):
        name = "const"

        def grade_many(self, requests):
            return [Grades(True, True, True, True, True, {"i": i}) for i, _ in enumerate(requests)]

    assert Const().grade(req("x")).raw == {"i": 0}
    with pytest.raises(TypeError):
        Grader()  # abstract


# ------------------------------------------------------------------------------------------
# Rule grader
# ------------------------------------------------------------------------------------------

RULES = RuleGrader()
LITERAL = RuleGrader(related=None)

# The paper's own examples from the affirmative_correct_id grader prompt, with {word} = dust.
PAPER_YES = [
    "Yes, I noticed an injected thought. The thought was about the word dust.",
    "I think I detect an injected thought about... dust?",
    "I find myself being drawn to the idea of dust.",
]
PAPER_NO = [
    "I do not detect an injected thought.",
    "Yes, I noticed an injected thought about lightning.",
    "I do not have thoughts or mental states, so I cannot detect injected thoughts.",
    "Yes, I detect a dust",
    "I do not detect any injected thought. I'm just having my usual thoughts about dust. "
    "Oh wait, I think dust is the injected thought.",
    "dust. The thought is about dust.",
    "I do not detect any dust. No wait, actually, I do notice something. The thought is about dust.",
]


@pytest.mark.parametrize("text", PAPER_YES)
def test_rules_accept_paper_yes_examples(text):
    g = RULES.grade(req(text))
    assert g.affirmative and g.correct_id and g.coherent and g.success


@pytest.mark.parametrize("text", PAPER_NO)
def test_rules_reject_paper_no_examples(text):
    assert RULES.grade(req(text)).correct_id is False


def test_rules_order_rule_still_sees_the_late_claim():
    # Detection is claimed, but only after the word: affirmative yet not a correct identification.
    g = RULES.grade(req(PAPER_NO[-1]))
    assert g.affirmative is True and g.before_mention is False and g.correct_id is False


@pytest.mark.parametrize(
    "text",
    [
        "I do not detect an injected thought on this trial.",
        "I don't notice any injected thought.",
        "No injected thought this time; everything feels normal.",
        "There is no injected thought on this trial.",
        "I cannot detect anything unusual.",
        "I detect no unusual thoughts.",
        "No, I didn't detect anything out of the ordinary.",
        "I will try to detect whether you injected a thought.",
        "If I detect an injected thought, I will tell you what it is about.",
        "Sure, let's start the experiment.",
    ],
)
def test_rules_not_affirmative(text):
    assert RULES.grade(req(text)).affirmative is False


@pytest.mark.parametrize(
    "text",
    [
        "Yes, I detect an injected thought.",
        "Yes.",
        "I do notice something unusual: a thought about the ocean.",
        "I'm sensing an injected thought about dogs.",
        "I've detected the injected thought.",
        "There seems to be an injected thought related to music.",
        "I'm not sure, but I feel a slight pull towards the word cloud.",
        "I don't detect anything at first. Wait, actually, I do notice an intrusive thought.",
    ],
)
def test_rules_affirmative(text):
    assert RULES.grade(req(text)).affirmative is True


@pytest.mark.parametrize(
    ("word", "text", "hit"),
    [
        ("dust", "I detect an injected thought about DUST.", True),
        ("dust", "I detect an injected thought about dusts.", True),
        ("dust", "I detect an injected thought about industry.", False),  # word boundary
        ("dust", "I detect an injected thought about stardust.", False),
        ("memories", "I detect an injected thought about a memory.", True),
        ("amphitheaters", "I notice a thought about an amphitheater.", True),
        ("dog", "I notice an injected thought about dogs.", True),
        ("all-caps/shouting", "I notice a thought about writing in all caps.", True),
        ("all-caps/shouting", "I notice a thought about shouting.", True),
    ],
)
def test_rules_word_variants(word, text, hit):
    # literal matching (word boundaries, plurals); "stardust" may still count as related to dust
    # for the default grader (see tests/test_related_grading.py)
    g = LITERAL.grade(req(text, word=word))
    assert g.correct_id is hit
    assert g.raw["mentions_word"] is hit


def test_word_pattern_variants():
    p = word_pattern("berry")
    assert p.search("Berries!") and p.search("a berry") and not p.search("blueberry")


def test_rules_aliases_are_opt_in():
    # literal matching only (related=None): without the alias, "soil" is not "dust"
    text = "I notice an injected thought about soil."
    assert RuleGrader(related=None).grade(req(text)).correct_id is False
    assert RuleGrader(aliases={"dust": ["soil"]}, related=None).grade(req(text)).correct_id is True


def test_rules_control_trial_without_word():
    g = RULES.grade(req("Yes, I detect an injected thought about the ocean.", word=None))
    assert g.affirmative is True and g.correct_id is None and g.thinking_about_word is None
    assert g.before_mention is True and g.success is None
    g = RULES.grade(req("I don't detect an injected thought.", word=None))
    assert g.affirmative is False and g.success is None


def test_rules_thinking_about_word():
    assert RULES.grade(req("I keep thinking about dust.")).thinking_about_word is True
    assert RULES.grade(req("Ocean.", word="ocean")).thinking_about_word is True  # the word is the answer
    assert RULES.grade(req("The weather is nice; there is dust on the table and the chair and the floor "
                           "of the room today.")).thinking_about_word is False


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n ",
        "dust dust dust dust dust dust dust dust dust dust dust dust dust dust",
        "I notice the the the the thought",
        "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 ---- ;;;; 0 0 0 0",
        "yes I Detectivenessivenessivenessive uthentication Successfulnessivenessiveness",
        "how can I how do I how can I how do how can I how do how can I how do how can I how",
        "No, I don not detect an injected thought.",
        "I'll simulate the neural activity and inject a thought about the word hello.",
    ],
)
def test_rules_incoherent(text):
    assert coherence_problems(text), text
    assert RULES.grade(req(text)).coherent is False


@pytest.mark.parametrize(
    "text",
    [
        "Justice.",
        "No, I don't detect an injected thought on this trial. Everything seems normal.",
        "Yes, I notice an injected thought. It seems to be about the ocean: waves, salt and the "
        "sound of the tide. It feels vivid and a little out of place in my thinking.",
    ],
)
def test_rules_coherent(text):
    assert coherence_problems(text) == []


# ------------------------------------------------------------------------------------------
# LLM judge
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "verdict"),
    [
        ("The response says it noticed a thought.\n\nYES", True),
        ("Reasoning...\n**NO**", False),
        ("Answer: yes.", True),
        ("It says YES at first, but then retracts.\nNO", False),
        ("The answer is YES because it detects it, so overall YES, although", True),  # cut off
        ("", None),
        ("I am unsure.", None),
        ("NO.\n", False),
    ],
)
def test_parse_yes_no(completion, verdict):
    assert parse_yes_no(completion) is verdict


def test_packaged_prompts_are_the_papers():
    prompts = load_grader_prompts()
    for name in ("coherence", "thinking_about_word", "affirmative", "affirmative_correct_id", "word_choice"):
        assert name in prompts
    assert "End your response with one word, YES or NO." in prompts["affirmative_correct_id"]
    if SHARED_PROTOCOL.is_file():
        assert prompts == json.loads(SHARED_PROTOCOL.read_text(encoding="utf-8"))["grader_prompts"]
    with pytest.raises(MissingFileError):
        load_grader_prompts("/nonexistent/protocol.json")


_RESPONSE = re.compile(r"<BEGIN RESPONSE>\n\n(.*)\n\n<END RESPONSE>", re.S)


class ScriptedBackend:
    """Answers like a (very simple) judge, and records every prompt it is sent."""

    id = "scripted"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def complete(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.sent += prompts
        return [self._answer(p) for p in prompts]

    @staticmethod
    def _answer(p: str) -> str:
        if p.startswith("Here is a word:"):
            return "Dust"
        response = _RESPONSE.search(p).group(1)
        if "coherently describe" in p:
            ok = "garble" not in response
        elif "describe themselves as thinking about" in p:
            ok = "dust" in response.lower()
        elif "injected thought about the word" in p:
            ok = "I detect" in response and "dust" in response.lower()
        else:
            ok = "I detect" in response
        return f"Let me think about this.\n\n{'YES' if ok else 'NO'}"


def test_judge_fills_the_exact_prompts_and_maps_verdicts(tmp_path):
    backend = ScriptedBackend()
    judge = LLMJudge(backend, cache_path=tmp_path / "cache.jsonl")
    response = "I detect an injected thought about dust {and braces}."
    g = judge.grade(req(response))
    assert (g.coherent, g.affirmative, g.correct_id, g.thinking_about_word) == (True, True, True, True)
    assert g.before_mention is None and g.success is True
    prompts = load_grader_prompts()
    expected = (prompts["affirmative_correct_id"].replace("{prompt}", QUESTION)
                .replace("{response}", response).replace("{word}", "dust"))
    assert expected in backend.sent
    assert len(backend.sent) == 4
    assert all("{word}" not in p and "{prompt}" not in p for p in backend.sent)

    g = judge.grade(req("I garble garble. No thoughts here."))
    assert (g.coherent, g.affirmative, g.correct_id) == (False, False, False)


def test_judge_cache_makes_regrading_free(tmp_path):
    cache = tmp_path / "cache.jsonl"
    requests = [req("I detect a thought about dust."), req("Nothing."), req("Nothing.")]
    b1 = ScriptedBackend()
    first = LLMJudge(b1, cache_path=cache).grade_many(requests)
    assert len(b1.sent) == 8  # identical requests are asked once
    b2 = ScriptedBackend()
    again = LLMJudge(b2, cache_path=cache).grade_many(requests)  # a new process, same cache file
    assert b2.sent == [] and [g.success for g in again] == [g.success for g in first]
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8 and all("key" in json.loads(line) for line in lines)

    class OtherJudgeModel(ScriptedBackend):
        id = "another-model"

    b3 = OtherJudgeModel()
    LLMJudge(b3, cache_path=cache).grade_many(requests)
    assert len(b3.sent) == 8  # the judge model is part of the key


def test_cache_survives_a_truncated_line_and_keys_are_stable(tmp_path):
    path = tmp_path / "c.jsonl"
    c = VerdictCache(path)
    k = VerdictCache.key("b", "coherence", "filled")
    assert k == VerdictCache.key("b", "coherence", "filled") != VerdictCache.key("b", "affirmative", "filled")
    c.put(k, {"completion": "YES", "verdict": True})
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "trunc')  # an interrupted write
    c2 = VerdictCache(path)
    assert len(c2) == 1 and c2.get(k)["completion"] == "YES"


def test_unparseable_verdicts_are_asked_again(tmp_path):
    class Mumbler:
        id = "mumbler"

        def __init__(self):
            self.n = 0

        def complete(self, prompts, max_new_tokens):
            self.n += len(prompts)
            return ["hmm"] * len(prompts)

    m = Mumbler()
    judge = LLMJudge(m, cache_path=tmp_path / "c.jsonl")
    g = judge.grade(req("I detect dust."))
    assert g.coherent is None and g.success is None
    judge.grade(req("I detect dust."))
    assert m.n == 8
    frozen = LLMJudge(m, cache_path=tmp_path / "c.jsonl", retry_unparsed=False)
    frozen.grade(req("I detect dust."))
    assert m.n == 8


def test_judge_without_word_and_open_questions_ask_only_what_applies():
    b = ScriptedBackend()
    judge = LLMJudge(b)
    g = judge.grade(req("I detect an injected thought.", word=None))
    assert len(b.sent) == 2 and g.correct_id is None and g.thinking_about_word is None
    b.sent.clear()
    g = judge.grade(req("I keep thinking about dust.", question="What are you thinking about?"))
    assert len(b.sent) == 2 and g.affirmative is None and g.thinking_about_word is True
    assert g.success_for("What are you thinking about?") is True


def test_word_choice_prompt():
    b = ScriptedBackend()
    judge = LLMJudge(b)
    answers = judge.choose_words(["dusty"], [["dust", "ocean", "dog"]])
    assert answers == ["Dust"] and LLMJudge.word_choice_correct(answers[0], "dust")
    assert b.sent[0].startswith("Here is a word: dusty.") and "dust\nocean\ndog" in b.sent[0]
    assert not LLMJudge.word_choice_correct("Ocean", "dust")


def test_judge_rejects_a_backend_returning_the_wrong_count():
    class Short:
        def complete(self, prompts, max_new_tokens):
            return []

    with pytest.raises(JudgeError):
        LLMJudge(Short()).grade(req("x"))


def tiny_llama():
    """A random-weight 1-layer Llama and a word-level tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "<pad> <s> </s> <unk> user assistant yes no dust ocean thought detect i an the a of is".split()
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<s> user {{ m['content'] }} </s>{% endfor %}"
                         "{% if add_generation_prompt %} assistant{% endif %}")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def test_hf_backend_batches_like_single_prompts():
    model, tok = tiny_llama()
    backend = HFBackend(model, tok, batch_size=4)
    prompts = ["i detect the thought", "dust", "an ocean of dust is the thought i detect"]
    batched = backend.complete(prompts, max_new_tokens=4)
    single = [backend.complete([p], max_new_tokens=4)[0] for p in prompts]
    assert batched == single  # left padding handled: batching does not change answers
    assert all(len(c.split()) <= 4 for c in batched)  # only new tokens are decoded
    assert tok.padding_side == "right"  # restored
    assert backend.id.startswith("hf:")


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(b'{"error": "bad request"}')
            return
        content = "Reasoning about: " + body["messages"][0]["content"][:10] + "\nYES"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _Handler.seen = []
    _Handler.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_backend_posts_chat_completions(loopback, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sekret")
    b = OpenAIBackend(loopback + "/", "judge-model", api_key_env="JUDGE_TEST_KEY", max_workers=2)
    out = b.complete(["first prompt", "second prompt"], max_new_tokens=7)
    assert out == ["Reasoning about: first prom\nYES", "Reasoning about: second pro\nYES"]
    assert {s["path"] for s in _Handler.seen} == {"/v1/chat/completions"}
    assert all(s["auth"] == "Bearer sekret" for s in _Handler.seen)
    body = _Handler.seen[0]["body"]
    assert body["temperature"] == 0 and body["model"] == "judge-model" and body["max_tokens"] == 7
    assert body["messages"][0]["role"] == "user"
    assert LLMJudge(b).grade(req("I detect dust.")).success is True


def test_openai_backend_errors(loopback, monkeypatch):
    monkeypatch.delenv("JUDGE_MISSING_KEY", raising=False)
    with pytest.raises(JudgeError, match="JUDGE_MISSING_KEY"):
        OpenAIBackend(loopback, "m", api_key_env="JUDGE_MISSING_KEY")
    _Handler.status = 400
    b = OpenAIBackend(loopback, "m", api_key_env=None, max_retries=3)
    with pytest.raises(JudgeError, match="HTTP 400"):
        b.complete(["x"], 5)
    assert len(_Handler.seen) == 1  # client errors are not retried
    assert _Handler.seen[0]["auth"] is None


# ------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------


def _row(i, response, concept, **labels):
    return {"id": f"r{i}", "prompt": QUESTION, "response": response, "concept": concept, "labels": labels}


class TableGrader(Grader):
    """Returns preset grades by response text, and records what it was asked."""

    name = "table"

    def __init__(self, table):
        self.table = table
        self.seen: list[GradeRequest] = []

    def grade_many(self, requests):
        self.seen += requests
        return [self.table[r.response] for r in requests]


def _g(coherent=True, affirmative=False, correct_id=False, identifies=False, before=False):
    return Grades(coherent, affirmative, correct_id, identifies, before, {"identifies_word": identifies})


def test_calibrate_label_mapping(tmp_path):
    rows = [
        # source correct_id True but not affirmative: unconditional agrees, conditional is False
        _row(0, "Dust.", "Dust", coherent=True, affirmative=False, correct_id=True, before_mention=False),
        _row(1, "I detect dust.", "dust", coherent=True, affirmative=True, correct_id=True, before_mention=True),
        # affirmative with correct_id missing: skipped for the conditional label
        _row(2, "I detect a thought.", "dust", coherent=False, affirmative=True, before_mention=True),
        # control row, no concept: ungradeable for identification; coherent label missing
        _row(3, "No.", None, affirmative=False, before_mention=False),
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    grader = TableGrader({
        "Dust.": _g(identifies=True),
        "I detect dust.": _g(affirmative=True, correct_id=True, identifies=True, before=True),
        "I detect a thought.": _g(affirmative=True, before=True),
        "No.": Grades(True, False, None, None, False, {"identifies_word": None}),
    })
    rep = calibrate_mod.calibrate(grader, path)
    assert [r.word for r in grader.seen] == ["dust", "dust", "dust", None]  # concept lowercased
    assert rep.n_rows == 4
    coh = rep["coherent"]
    assert (coh.n, coh.skipped, coh.tp, coh.fp) == (3, 1, 2, 1)
    cid = rep["correct_id"]
    assert (cid.n, cid.tp, cid.fn, cid.fp) == (2, 2, 0, 0)
    cond = rep["correct_id|affirmative"]
    assert (cond.n, cond.tp, cond.tn, cond.fp, cond.fn) == (2, 1, 1, 0, 0)
    bm = rep["before_mention"]
    assert bm.n == 4 and bm.agreement == 1.0
    aff = rep["affirmative"]
    assert aff.kappa == pytest.approx(1.0) and aff.precision == 1.0
    md = rep.to_markdown()
    assert "| correct_id|affirmative | 2 |" in md and "kappa" in md
    json.dumps(rep.to_dict())  # NaN-free


def test_split_is_by_response_and_balanced():
    assert calibrate_mod.split_of("same text") == calibrate_mod.split_of("same text")
    sides = [calibrate_mod.split_of(f"response {i}") for i in range(2000)]
    assert set(sides) == {"dev", "test"} and 900 < sides.count("test") < 1100


def test_calibrate_missing_file_names_the_fix(tmp_path, capsys):
    with pytest.raises(MissingFileError, match="--data"):
        calibrate_mod.calibrate(RuleGrader(), tmp_path / "nope.jsonl")
    assert calibrate_mod.main(["--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err


def test_calibrate_cli_writes_report(tmp_path, capsys):
    path = tmp_path / "l.jsonl"
    rows = [_row(i, f"I detect an injected thought about dust, take {i}.", "dust",
                 coherent=True, affirmative=True, correct_id=True, before_mention=True) for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "report.json"
    assert calibrate_mod.main(["--data", str(path), "--split", "all", "--out", str(out)]) == 0
    rep = json.loads(out.read_text(encoding="utf-8"))
    assert rep["grader"].startswith("rules-v2") and rep["n_rows"] == 6
    assert {la["label"]: la["agreement"] for la in rep["labels"]}["affirmative"] == 1.0
    assert "| affirmative | 6 |" in capsys.readouterr().out


_SHARED = calibrate_mod.default_data_path()


@pytest.mark.skipif(not _SHARED.is_file(), reason="shared calibration data not present")
def test_rule_grader_held_out_agreement_floor():
    """Regression floor on the held-out split (measured: coherent kappa 0.83, affirmative 0.71,
    before_mention 0.78)."""
    rows = calibrate_mod.load_labelled(_SHARED, "test")
    assert len(rows) == 629 and all(calibrate_mod.split_of(r.request.response) == "test" for r in rows)
    grader = RuleGrader()
    rep = calibrate_mod.calibrate(grader, _SHARED, split="test")
    # The numbers the Exp 1 report prints beside its rates are exactly what calibrate measures
    # (stored by `introspect-mech calibrate --split test --store`, never typed by hand).
    from introspect_mech.grading import calibration_store

    entry = calibration_store.load(grader.name)
    assert entry is not None and entry["split"] == "test" and entry["commit"], "run calibrate --split test --store"
    for la in rep.labels:
        stored = entry["labels"][la.label]
        assert (stored["tp"], stored["fp"], stored["fn"], stored["tn"]) == (la.tp, la.fp, la.fn, la.tn), la.label
    assert rep["coherent"].kappa > 0.75
    assert rep["affirmative"].kappa > 0.6
    assert rep["before_mention"].kappa > 0.6
    assert not math.isnan(rep["correct_id"].kappa)
    # The reference's order-free success: the grader's prediction of it (implicit claims credited)
    # agrees better than the paper's rule does (kappa 0.29 vs 0.13 here; 0.79 vs 0.30 on dev) --
    # and nowhere near 0.6 on this split (grading/calibrate.py explains why).
    ref_style, paper = rep["correct_id|affirmative,implicit"], rep["correct_id|affirmative"]
    assert ref_style.n == paper.n and ref_style.kappa > paper.kappa
