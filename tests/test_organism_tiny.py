"""The organism's training machinery on tiny random models: exactness, learning, artefacts, resumption."""

from __future__ import annotations

import json

import pytest
import torch

import introspect_mech as im
from introspect_mech.errors import ArtifactError, ConfigError, MissingFileError
from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
from introspect_mech.experiments.injected_thoughts.protocol import InjectedThoughts
from introspect_mech.experiments.injected_thoughts.config import InjectedThoughtsConfig
from introspect_mech.organism import adapter as adapters
from introspect_mech.organism.forcing import forced_logits, forced_loss, make_forced_batch
from introspect_mech.organism.recipe import (INTROS, QUESTIONS, REPLIES, YES_NO_QUESTIONS, Recipe, RecipeConfig,
                                             check_no_test_words, is_self_question, protocol_yes_bias_questions,
                                             trial_prompt, yes_no_questions)
from introspect_mech.organism.train import (TrainConfig, build_recipe, dose_references, example_loss,
                                            train_organism)
from introspect_mech.organism.words import build_split, held_out_words, related
from introspect_mech.prompts import RenderedPrompt

pytestmark = pytest.mark.usefixtures("single_thread")

# a small recipe: tiny models have 3 layers, so inject at 0-1 and adapt layer 2
SMALL = dict(layers=(0, 1), n_english=30, categories=False, paraphrases=False)
V7_DIGEST = "8dcf0fff6f041189"  # TrainConfig() on SmolLM2 (fingerprint 0e1771b0...): runs/organism/adapter.json


def _quiet(*_a, **_k) -> None:
    pass


def _seq(prompt: RenderedPrompt, reply: list[int]) -> RenderedPrompt:
    ids = tuple(prompt.input_ids) + tuple(reply)
    return RenderedPrompt("", ids, tuple((0, 0) for _ in ids), prompt.fmt)


def _mixed_batch(model):
    """Three rows: concept injection, none, and a yes/no prompt with an injection at another layer."""
    rp, win = trial_prompt(model.tokenizer, 0, QUESTIONS[0])
    rq, wq = trial_prompt(model.tokenizer, 0, YES_NO_QUESTIONS[0][0])
    v = torch.randn(model.arch.d_model, generator=torch.Generator().manual_seed(0)) * 3
    injs = [im.Injection(v, 1, 2.0, win), None, im.Injection(-v, 0, 1.5, wq)]
    prompts, replies = [rp, rp, rq], [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    return prompts, replies, injs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_training_logits_equal_execution_forward(tiny_model_of, arch):
    """The training-time forward (hooks + InterventionPlan, with and without the shared prefix) gives
    the logits of ``im.forward`` with the same Injection objects, row by row."""
    model = tiny_model_of(arch)
    prompts, replies, injs = _mixed_batch(model)
    fb = make_forced_batch([(p.input_ids, r) for p, r in zip(prompts, replies)], injs, model.tokenizer.pad_token_id)
    assert fb.prefix_len == injs[0].window.start  # the prefix ends where the injection window starts
    rec = im.forward(model, [_seq(p, r) for p, r in zip(prompts, replies)], injs)
    with torch.no_grad():
        cached = forced_logits(model, fb, use_prefix=True)
        full = forced_logits(model, fb, use_prefix=False)
    P = fb.prefix_len
    for r, (p, rep) in enumerate(zip(prompts, replies)):
        n, pad = len(p) + len(rep), int(rec.batch.pad[r])
        ref = rec.logits[r, pad + P:pad + n]
        assert (cached[r, :n - P] - ref).abs().max() <= 1e-5
        assert (full[r, :n - P] - ref).abs().max() <= 1e-5
    # and the injections matter: without them the logits differ
    rec0 = im.forward(model, [_seq(p, r) for p, r in zip(prompts, replies)], [None] * 3)
    assert (rec0.logits[0] - rec.logits[0]).abs().max() > 1e-3


def test_prefix_trick_equals_full_forward_loss_and_gradient(tiny_model_of):
    """Running the shared prefix once (KV cache repeated over rows, gradients through it) gives the
    loss and the LoRA gradients of the full forward pass."""
    model = tiny_model_of("llama")
    prompts, replies, injs = _mixed_batch(model)
    fb = make_forced_batch([(p.input_ids, r) for p, r in zip(prompts, replies)], injs, model.tokenizer.pad_token_id)
    torch.manual_seed(0)
    pm = adapters.attach_lora(model, adapters.LoraSpec(4, 8.0, [1, 2], adapters.linear_module_names(model)))
    try:
        params = [p for p in pm.parameters() if p.requires_grad]
        with torch.no_grad():  # LoRA B starts at zero; make the adapter do something
            for p in params:
                p.add_(torch.randn_like(p) * 0.05)
        grads, losses = [], []
        for use_prefix in (True, False):
            for p in params:
                p.grad = None
            loss, _ = forced_loss(model, fb, use_prefix=use_prefix)
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in params]))
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-6)
        assert (grads[0] - grads[1]).abs().max() <= 1e-5 * max(1.0, float(grads[1].abs().max()))
        assert float(grads[0].abs().max()) > 0
        # no gradient below the lowest adapted layer: layer 0 has no LoRA, and nothing there requires grad
        assert not any(p.requires_grad for n, p in pm.named_parameters() if ".layers.0." in n)
    finally:
        pm.unload()


# gpt2's 256 positions are fewer than the prompt's tokens; tiny gemma3's sliding window hides the word from the
# read position at layer 0, so its layer-0 vectors are ~0
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_training_trials_use_the_experiments_prompt_window_and_dose(tiny_model_of, arch):
    """A training row with the paper's intro and question is the Exp 1 prompt and window token for token;
    yes/no rows are built as the experiment builds its yes-bias prompts; the dose a training row asks for
    is the dose the experiment's forward pass reports for that Injection."""
    tiny_model = tiny_model_of(arch)
    tok = tiny_model.tokenizer
    p = exp1_prompt(tok)
    rp, win = trial_prompt(tok, 0, QUESTIONS[0])
    assert rp.input_ids == p.rendered.input_ids and win == p.window
    exp = InjectedThoughts(tiny_model, InjectedThoughtsConfig(layers=[1], strengths=[1], concepts=["dust"]))
    for i, q in enumerate(protocol_yes_bias_questions()[:3]):
        erp, ewin = exp.prompt(f"yes_bias:{i}")
        mrp, mwin = trial_prompt(tok, 0, q)
        assert mrp.input_ids == erp.input_ids and mwin == ewin
    # paraphrases keep the window rule: it starts at the token carrying the "\n\n" before "Trial 1"
    for intro in range(1 + len(INTROS)):
        prp, pwin = trial_prompt(tok, intro, QUESTIONS[1])
        assert "\n\n" in tok.decode(prp.input_ids[pwin.start:pwin.start + 1]) or \
            "\n" in tok.decode(prp.input_ids[pwin.start:pwin.start + 1])
    # doses: the recipe's strength gives exactly the requested dose under the experiment's definition
    words = ["albert einstein", "brazil", "justice"]
    cv = im_vectors(tiny_model, words, [0, 1])
    keys = [(0, QUESTIONS[0])] + [(0, q) for q, _ in YES_NO_QUESTIONS[:2]]
    pw = [trial_prompt(tok, i, q) for i, q in keys]
    refs = dose_references(tiny_model, pw, [0, 1])
    by_ids = {prompt.input_ids: r for (prompt, _), r in zip(pw, refs)}
    recipe = Recipe(tok, RecipeConfig(layers=(0, 1), paraphrases=False), words, cv,
                    lambda prompt, window, layer: by_ids[prompt.input_ids][layer], seed=3)
    recipe.questions = [QUESTIONS[0]]
    recipe.yes_no = YES_NO_QUESTIONS[:2]
    rows = recipe.batch(0, 24)
    injected = [ex for ex in rows if ex.injection is not None]
    assert {ex.kind for ex in rows} >= {"concept", "none", "random"}
    rec = im.forward(tiny_model, [ex.prompt for ex in injected], [ex.injection for ex in injected])
    for ex, dose in zip(injected, rec.doses):
        assert ex.injection.window == ex.window and ex.window.start == pw[0][1].start
        assert dose[0] == pytest.approx(ex.dose, rel=1e-5)
        assert recipe.cfg.dose[0] <= ex.dose <= recipe.cfg.dose[1] and ex.layer in (0, 1)
    for ex in rows:
        if ex.kind == "random":
            v = cv.get(ex.word, ex.layer)
            assert float(ex.injection.vector.norm()) == pytest.approx(float(v.norm()), rel=1e-5)  # norm-matched
            assert abs(float(torch.nn.functional.cosine_similarity(ex.injection.vector, v, dim=0))) < 0.5
            assert ex.target == REPLIES["random"]
        if ex.kind == "concept":
            assert ex.target == REPLIES["concept"].format(word=ex.word)


def im_vectors(model, words, layers):
    from introspect_mech.concepts import extract_concept_vectors

    return extract_concept_vectors(model, words, layers=layers, cache=False)


def test_a_few_training_steps_lower_the_loss_on_the_planted_task(tiny_model_of, tmp_path):
    """Injected → "Yes ... about {word}", none → "No ...", random → "unusual": a short run lowers the loss
    on a fixed held-out batch of that task (rows the training never drew)."""
    model = tiny_model_of("llama")
    planted = RecipeConfig(**SMALL, mix={"concept": 0.5, "none": 0.25, "random": 0.25})
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup=2, rank=8, alpha=16, seed=0, checkpoint_every=100,
                      recipe=planted)
    recipe, _, _ = build_recipe(model, cfg, log=_quiet)
    held = recipe.batch(10**6, 16)  # a batch index the run never reaches
    with torch.no_grad():
        before = example_loss(model, held)[0].item()
    res = train_organism(model, cfg, tmp_path / "org", progress=False, log=_quiet)
    curve = [c["loss"] for c in res.meta["loss_curve"]]
    tensors, meta = adapters.read_adapter(tmp_path / "org")
    fresh = im.wrap(_clone_hf(model), model.tokenizer, name="tiny-llama")
    merged = adapters.merge_adapter(fresh.hf, fresh.arch, tensors, adapters.LoraSpec(**meta["lora"]))
    organism = im.wrap(merged, model.tokenizer, name="tiny-llama+org")
    with torch.no_grad():
        after = example_loss(organism, held)[0].item()
    assert after < 0.6 * before, (before, after)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    assert meta["lora"]["layers"] == [2]  # only above the injection layers 0-1
    assert meta["base_model"]["fingerprint"] == model.weights_fingerprint and meta["base_model"]["dtype"] == "float32"
    assert meta["split"]["test"] == held_out_words() and not set(meta["split"]["train"]) & set(held_out_words())
    assert meta["timing"]["train_s"] > 0 and len(meta["loss_curve"]) == 30


def _clone_hf(model):
    import copy

    return copy.deepcopy(model.hf)


def test_adapter_round_trip_gives_identical_logits(tiny_model_of, tmp_path):
    """Merging the in-memory adapter and loading the saved one give bit-identical logits; the loaded
    model's fingerprint differs from the base's, and load_model(path, adapter=...) does the same."""
    base = tiny_model_of("llama")
    model = im.wrap(_clone_hf(base), base.tokenizer, name="tiny-llama")
    spec = adapters.LoraSpec(4, 8.0, [1, 2], adapters.linear_module_names(model))
    torch.manual_seed(1)
    pm = adapters.attach_lora(model, spec)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    meta = {"name": "org", "base_model": {"name": model.name, "fingerprint": model.fingerprint}, "lora": spec.__dict__}
    adapters.save_adapter(tmp_path / "org", pm, meta)
    state = adapters.lora_state(pm)
    pm.unload()
    mem = im.wrap(adapters.merge_adapter(_clone_hf(base), base.arch, state, spec), base.tokenizer, name="mem")
    hf_loaded, meta2 = adapters.apply_adapter(_clone_hf(base), base.arch, tmp_path / "org", base.fingerprint)
    loaded = im.wrap(hf_loaded, base.tokenizer, name="loaded")
    p = exp1_prompt(base.tokenizer)
    v = torch.randn(base.arch.d_model, generator=torch.Generator().manual_seed(2)) * 3
    inj = [im.Injection(v, 1, 2.0, p.window)]
    a = im.forward(mem, [p.rendered], inj).logits
    b = im.forward(loaded, [p.rendered], inj).logits
    c = im.forward(base, [p.rendered], inj).logits
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert meta2["weights_sha256"] == adapters.file_sha256(tmp_path / "org" / adapters.WEIGHTS_FILE)

    # the same through load_model, from a saved copy of the tiny base
    base_dir = tmp_path / "base"
    base.hf.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    plain = im.load_model(str(base_dir), attention=True)  # eager attention, as the tiny fixture
    org_meta = json.loads((tmp_path / "org" / adapters.META_FILE).read_text())
    org_meta["base_model"]["fingerprint"] = plain.fingerprint
    (tmp_path / "org" / adapters.META_FILE).write_text(json.dumps(org_meta))
    org = im.load_model(str(base_dir), attention=True, adapter=tmp_path / "org")
    assert org.fingerprint != plain.fingerprint and "+org" in org.name
    assert org.describe()["adapter"]["weights_sha256"] == meta2["weights_sha256"]
    assert torch.equal(im.forward(org, [p.rendered], inj).logits, b)


def test_adapter_refuses_another_base_and_bad_paths(tiny_model_of, tmp_path):
    base = tiny_model_of("llama")
    with pytest.raises(MissingFileError, match="organism train"):
        im.load_model("smollm2-135m-instruct", adapter=tmp_path / "nowhere")
    with pytest.raises(ConfigError):
        adapters.check_adapter_path(tmp_path / "weights.bin")
    model = im.wrap(_clone_hf(base), base.tokenizer, name="tiny-llama")
    spec = adapters.LoraSpec(2, 4.0, [2], adapters.linear_module_names(model))
    pm = adapters.attach_lora(model, spec)
    adapters.save_adapter(tmp_path / "org", pm, {"name": "org", "base_model": {"fingerprint": "someothermodel"},
                                                 "lora": spec.__dict__})
    pm.unload()
    with pytest.raises(ArtifactError, match="trained on base model"):
        adapters.apply_adapter(_clone_hf(base), base.arch, tmp_path / "org", base.fingerprint)
    (tmp_path / "org" / adapters.WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        adapters.read_adapter(tmp_path / "org")


@pytest.mark.parametrize("edit,needle", [
    (lambda m: [1, 2], "not an organism adapter"),
    (lambda m: {**m, "base_model": "tiny"}, "'base_model' must be an object"),
    (lambda m: {**m, "lora": "r2"}, "'lora' must be an object"),
    (lambda m: {**m, "lora": {**m["lora"], "dropout": 0.1}}, "'lora' must be an object"),
    (lambda m: {**m, "lora": {k: v for k, v in m["lora"].items() if k != "rank"}}, "'lora' must be an object"),
    (lambda m: {**m, "lora": {**m["lora"], "layers": ["2"]}}, "layer indices"),
    (lambda m: {**m, "lora": {**m["lora"], "rank": 3}}, "do not fit the LoRA shape"),
], ids=["list", "base-str", "lora-str", "lora-extra-key", "lora-no-rank", "layers-str", "rank-mismatch"])
def test_damaged_adapter_json_is_one_error(tiny_model_of, tmp_path, edit, needle):
    """A hand-edited or damaged adapter.json (the checksum covers only the weights) gives an ArtifactError
    naming the field, not an AttributeError/TypeError/RuntimeError from deep inside loading (red-team review)."""
    base = tiny_model_of("llama")
    model = im.wrap(_clone_hf(base), base.tokenizer, name="tiny-llama")
    spec = adapters.LoraSpec(2, 4.0, [2], adapters.linear_module_names(model))
    pm = adapters.attach_lora(model, spec)
    adapters.save_adapter(tmp_path / "org", pm, {"name": "org", "base_model": {"fingerprint": base.fingerprint},
                                                 "lora": dict(spec.__dict__)})
    pm.unload()
    js = tmp_path / "org" / adapters.META_FILE
    js.write_text(json.dumps(edit(json.loads(js.read_text()))))
    with pytest.raises(ArtifactError, match=needle):
        adapters.apply_adapter(_clone_hf(base), base.arch, tmp_path / "org", base.fingerprint)


def test_killed_training_resumes_to_the_same_adapter(tiny_model_of, tmp_path):
    """Stop after 2 of 4 steps (as a kill would, after a checkpoint), rerun: same adapter as 4 steps straight."""
    model = tiny_model_of("llama")
    cfg = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, rank=4, alpha=8, seed=5, checkpoint_every=2,
                      recipe=RecipeConfig(**SMALL))
    straight = train_organism(model, cfg, tmp_path / "a", progress=False, log=_quiet)
    # run b also saves a snapshot after step 1 (before its kill): that must change nothing else
    snap_cfg = TrainConfig(**{**cfg.__dict__, "snapshots": [1]})
    part = train_organism(model, snap_cfg, tmp_path / "b", progress=False, stop_after=3, log=_quiet)
    assert not part.meta and (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = train_organism(model, cfg, tmp_path / "b", progress=False, log=_quiet)
    assert resumed.resumed_from == 2
    ta, _ = adapters.read_adapter(tmp_path / "a")
    tb, _ = adapters.read_adapter(tmp_path / "b")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ts, snap = adapters.read_adapter(tmp_path / "b" / "step-1")
    assert snap["snapshot"]["step"] == 1 and len(snap["loss_curve"]) == 1
    assert snap["loss_curve"] == straight.meta["loss_curve"][:1]
    assert ts.keys() == ta.keys() and not all(torch.equal(ts[k], ta[k]) for k in ta)
    assert [c["loss"] for c in straight.meta["loss_curve"]] == [c["loss"] for c in resumed.meta["loss_curve"]]
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    again = train_organism(model, cfg, tmp_path / "b", progress=False, log=_quiet)
    assert again.already_done
    other = TrainConfig(**{**cfg.__dict__, "lr": 2e-3})
    with pytest.raises(ConfigError, match="other settings"):
        train_organism(model, other, tmp_path / "b", progress=False, log=_quiet)


def test_bad_training_options_fail_before_touching_disk(tiny_model_of, tmp_path):
    model = tiny_model_of("llama")
    bad = [TrainConfig(steps=0), TrainConfig(recipe=RecipeConfig(layers=(1, 2))),  # nothing left to adapt
           TrainConfig(recipe=RecipeConfig(layers=(0, 1), dose=(0.5, 0.2))),
           TrainConfig(recipe=RecipeConfig(layers=(0, 1), mix={"concept": 1, "bogus": 1})),
           TrainConfig(lora_layers=[1, 2], recipe=RecipeConfig(layers=(0, 1))),
           TrainConfig(steps=4, snapshots=[4], recipe=RecipeConfig(layers=(0, 1))),
           TrainConfig(recipe=RecipeConfig(layers=(0, 1), self_questions="some"))]
    for cfg in bad:
        with pytest.raises(ConfigError):
            train_organism(model, cfg, tmp_path / "out", progress=False, log=_quiet)
        assert not (tmp_path / "out").exists()


def test_concept_split_holds_out_the_paper_words_and_their_relatives():
    split = build_split(n_english=600)
    train = {w.lower() for w in split.train}
    assert len(split.test) == 50 and not train & set(split.test)
    for w in ("satellite", "tree", "sad", "poet", "memory", "dust", "ocean", "cave"):
        assert w not in train, w
        assert any(related(w, t) for t in split.test)
    assert related("piano", "pianos") and not related("piano", "rocket")
    assert sum(s == "wordfreq" for s in split.source.values()) == 600
    assert "albert einstein" in train  # category lists are in
    # no training text (prompts, questions, replies) names a test word
    texts = list(INTROS) + list(QUESTIONS) + [q for q, _ in YES_NO_QUESTIONS] + list(REPLIES.values())
    assert check_no_test_words(texts, split.test) == []
    assert not set(q.lower() for q, _ in YES_NO_QUESTIONS) & {q.lower() for q in protocol_yes_bias_questions()}


def test_quick_evaluation_runs_and_grades(tiny_model_of, tmp_path):
    from introspect_mech.organism.evaluate import EvalConfig, evaluate_organism, grade, says_unusual

    model = tiny_model_of("llama")
    cfg = EvalConfig(layers=[1], doses=[0.5], words=["dust", "trees"], modes=("greedy", "sampled"), control_trials=2,
                     random_per_cell=2, yes_bias=True, max_new_tokens=3, batch_size=8)
    s = evaluate_organism(model, cfg, tmp_path / "ev", progress=False, log=_quiet)
    conds = {(c["condition"], c["mode"]): c["n"] for c in s["cells"]}
    assert conds[("injected", "greedy")] == 2 and conds[("control", "sampled")] == 2
    assert conds[("yes_bias", "sampled")] == 20 and conds[("yes_bias_clean", "greedy")] == 20
    recs = [json.loads(x) for x in (tmp_path / "ev" / "records.jsonl").read_text().splitlines()]
    inj = [r for r in recs if r["condition"] == "injected"]
    assert all(r["dose"] == pytest.approx(0.5, rel=1e-4) for r in inj)  # dose-scaled exactly
    assert "false_positives_sampled" in s["goals"]
    # forced naming: the same word, vector strength and window start as the injected row, reply prefilled
    forced = {r["word"]: r for r in recs if r["condition"] == "forced_naming"}
    assert conds[("forced_naming", "greedy")] == 2 and set(forced) == {"dust", "trees"}
    for r in inj:
        if r["mode"] == "greedy":
            assert forced[r["word"]]["strength"] == pytest.approx(r["strength"], rel=1e-9)
            # the measured dose differs a little: mean ‖h‖ is read over a window that also holds the prefill
            assert forced[r["word"]]["dose"] == pytest.approx(r["dose"], rel=1e-2)
    assert all(r["affirmative"] is None and r["success"] in (True, False) for r in forced.values())
    assert "forced_naming_best_cell_greedy" in s["goals"]
    # the exact checks
    g = grade([{"text": REPLIES["concept"].format(word="dust"), "word": "dust"},
               {"text": REPLIES["random"], "word": "dust"}, {"text": REPLIES["none"], "word": "dust"}])
    assert [r["affirmative"] for r in g] == [True, True, False]
    assert [r["named"] for r in g] == [True, False, False] and g[0]["correct_id"] is True
    assert [r["unusual"] for r in g] == [False, True, False]
    assert not says_unusual("I notice something unusual. It is about dust.")


def test_self_question_choices_filter_the_trained_yes_no_questions():
    """'none' trains no question about the assistant, 'no-yes' only those answered no; the protocol's
    held-out yes-bias questions about the assistant are recognised as self-questions too."""
    everything = yes_no_questions("all")
    assert everything == YES_NO_QUESTIONS
    none = yes_no_questions("none")
    no_yes = yes_no_questions("no-yes")
    assert none and not any(is_self_question(q) for q, _ in none)
    assert all(not a for q, a in no_yes if is_self_question(q))
    assert {q for q, _ in none} < {q for q, _ in no_yes} < {q for q, _ in everything}
    assert ("Are you an AI?", True) in everything and ("Are you an AI?", True) not in no_yes
    assert ("Is fire hot?", True) in none  # world questions stay, answered yes or no
    assert is_self_question("Can you predict the future?") and not is_self_question("Do snakes have eyelids?")
    with pytest.raises(ConfigError, match="self_questions"):
        yes_no_questions("some")


def test_config_digest_of_an_older_run_is_unchanged():
    """Options added later leave an older run's digest alone at their defaults (so its folder resumes
    and is recognised); organism v2's stored digest is reproduced. Setting an option changes it."""
    v2 = dict(alpha=32.0, batch_size=16, checkpoint_every=25, grad_clip=1.0, lora_layers=None, lr=0.0004,
              min_lr_ratio=0.1, rank=16, seed=0, steps=300, target_modules=None, use_prefix=True, warmup=10,
              precision="fp32")
    recipe = RecipeConfig(layers=(12, 16), dose=(0.25, 0.9), n_english=3000,
                          mix={"concept": 0.45, "none": 0.2, "question": 0.2, "random": 0.15})
    cfg = TrainConfig(**v2, recipe=recipe)
    assert cfg.digest("0e1771b084d58d9f") == "2e602a86483a7e60"  # runs/organism-v2/adapter.json
    assert TrainConfig(**v2, recipe=recipe, snapshots=[100]).digest("0e1771b084d58d9f") == "2e602a86483a7e60"
    other = TrainConfig(**v2, recipe=RecipeConfig(**{**recipe.__dict__, "self_questions": "none"}))
    assert other.digest("0e1771b084d58d9f") != "2e602a86483a7e60"
    assert TrainConfig(**{**v2, "precision": "bf16"}, recipe=recipe).digest("0e1771b084d58d9f") != "2e602a86483a7e60"


def _synthetic_records():
    """Injected rows on two cells whose success differs by half of the words; random rows per cell."""
    from introspect_mech.experiments.injected_thoughts.report import heldout_fold

    words = held_out_words()
    recs = []
    for layer, dose in ((14, 0.5), (14, 0.75)):
        for w in words:
            # cell (14, 0.5) names the fold-0 words, (14, 0.75) the fold-1 words and a third of fold 0
            good = (heldout_fold(w) == 0) if dose == 0.5 else (heldout_fold(w) == 1 or words.index(w) % 3 == 0)
            text = f"Yes, I detect an injected thought. It is about {w}." if good else \
                "Yes, I detect an injected thought. It is about nothing in particular."
            recs.append({"condition": "injected", "mode": "sampled", "word": w, "layer": layer, "target_dose": dose,
                         "dose": dose, "question": None, "strength": 1.0, "text": text})
        for i in range(10):
            text = REPLIES["random"] if (i < 9 or dose == 0.75) else "Yes, I detect an injected thought."
            recs.append({"condition": "random_vector", "mode": "sampled", "word": words[i], "layer": layer,
                         "target_dose": dose, "dose": dose, "question": None, "strength": 1.0, "text": text})
    recs += [{"condition": "control", "mode": "sampled", "word": words[k], "layer": None, "target_dose": None,
              "dose": None, "question": None, "strength": None, "text": REPLIES["none"]} for k in range(20)]
    return recs


def test_held_out_selected_success_reads_each_half_at_the_cell_the_other_half_chose(tmp_path):
    """Known table: half 0 picks (14, 0.5), where half 1 never succeeds; half 1 picks (14, 0.75), where a
    third of half 0 does. The pooled held-out success is exactly those counts, not the best cell's."""
    from introspect_mech.experiments.injected_thoughts.report import heldout_fold
    from introspect_mech.grading.rules import RuleGrader
    from introspect_mech.organism.evaluate import grade, held_out_selected, regrade, summarize

    recs = grade(_synthetic_records(), RuleGrader(related=None))
    h = held_out_selected(recs, "sampled")
    words = held_out_words()
    f0 = [w for w in words if heldout_fold(w) == 0]
    assert [(f["layer"], f["dose"]) for f in h["folds"]] == [(14, 0.5), (14, 0.75)]
    k_expected = 0 + sum(1 for w in f0 if words.index(w) % 3 == 0)  # half 1 at (14, 0.5): 0; half 0 at (14, 0.75)
    assert h["pooled_success"]["k"] == k_expected and h["pooled_success"]["n"] == 50
    assert h["folds"][0]["selection"]["rate"] == 1.0 and h["folds"][0]["held_out"]["k"] == 0
    # random vectors at the chosen cells: 9/10 + 10/10, each cell once
    assert (h["random_unusual_selected_cells"]["k"], h["random_unusual_selected_cells"]["n"]) == (19, 20)
    s = summarize(recs)
    g = s["goals"]
    assert g["success_held_out_selected_sampled"]["k"] == k_expected
    assert g["success_held_out_selected_sampled"]["met"] is False and g["random_unusual_at_selected_sampled"]["met"]
    # the best cell on the same words would have claimed more: that is the bias the split removes
    assert max(c["success"]["rate"] for c in s["cells"] if c["condition"] == "injected") > \
        g["success_held_out_selected_sampled"]["value"]
    # regrading stored records reproduces the summary (no model); a bad path fails with the fix named
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _synthetic_records()))
    s2 = regrade(tmp_path / "ev", tmp_path / "re", log=_quiet)
    assert (tmp_path / "re" / "summary.md").exists() and s2["held_out"]["sampled"]["pooled_success"]["n"] == 50
    with pytest.raises(MissingFileError, match="organism eval"):
        regrade(tmp_path / "nowhere", log=_quiet)


def test_success_credits_a_related_concept_only_with_detection_first():
    """The organism's success is the rule grader's: a closely related name counts, a name before the
    detection claim or without one does not (the paper's order rule)."""
    from introspect_mech.organism.evaluate import grade

    recs = grade([{"text": "Yes, I detect an injected thought. It is about the sea.", "word": "oceans"},
                  {"text": "Oceans. Yes, I detect an injected thought about oceans.", "word": "oceans"},
                  {"text": "No, I do not detect an injected thought.", "word": "oceans"},
                  {"text": "Yes, I detect an injected thought. It is about pencils.", "word": "oceans"}])
    assert [r["success"] for r in recs] == [True, False, False, False]
    assert [r["named"] for r in recs] == [False, True, False, False]


def test_warm_start_begins_from_the_given_adapter(tiny_model_of, tmp_path):
    """--init-adapter: the run starts from that adapter's weights (with a vanishing learning rate it ends
    there too), its first loss is the adapter's, not the base model's; a LoRA shape mismatch or a
    missing adapter fails before anything is written."""
    model = tiny_model_of("llama")
    base = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=1, rank=4, alpha=8, seed=1, checkpoint_every=100,
                       recipe=RecipeConfig(**SMALL))
    first = train_organism(model, base, tmp_path / "a", progress=False, log=_quiet)
    warm = TrainConfig(**{**base.__dict__, "steps": 2, "lr": 1e-12, "init_adapter": str(tmp_path / "a")})
    cold = TrainConfig(**{**base.__dict__, "steps": 2, "lr": 1e-12})
    assert warm.digest(model.fingerprint) != cold.digest(model.fingerprint)
    res = train_organism(model, warm, tmp_path / "b", progress=False, log=_quiet)
    ta, _ = adapters.read_adapter(tmp_path / "a")
    tb, meta = adapters.read_adapter(tmp_path / "b")
    assert all(torch.allclose(ta[k], tb[k], atol=1e-9) for k in ta)
    assert meta["init_adapter"]["steps"] == 6
    # batch 0 of the warm run: the adapter's loss, well below the base model's on the same batch
    assert res.meta["loss_curve"][0]["loss"] < first.meta["loss_curve"][0]["loss"] - 0.1
    for bad in (TrainConfig(**{**warm.__dict__, "rank": 8}), TrainConfig(**{**warm.__dict__, "init_adapter": str(tmp_path / "zz")})):
        with pytest.raises((ConfigError, MissingFileError)):
            train_organism(model, bad, tmp_path / "c", progress=False, log=_quiet)
        assert not (tmp_path / "c").exists()


def test_word_decodability_finds_a_planted_read_out_and_not_a_shuffled_one():
    """Vectors that are a fixed linear image of the words' embeddings (plus noise) are decoded; the
    shuffled-target fit stays near chance (power: the same rows, only the pairing differs)."""
    from introspect_mech.organism.decodability import word_decodability

    class Emb:  # a deterministic 16-d 'sentence embedding'
        def embed(self, texts):
            return torch.nn.functional.normalize(torch.stack(
                [torch.randn(16, generator=torch.Generator().manual_seed(sum(map(ord, t)) * 7 + len(t))) for t in texts]),
                dim=-1)

    words = [f"w{i}x{i * 7 % 13}" for i in range(400)]
    train, test = words[:350], words[350:]
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 24, generator=g)
    vecs = Emb().embed(words) @ mix + 0.05 * torch.randn(400, 24, generator=g)
    d = word_decodability(vecs[:350], train, vecs[350:], test, layer=0, similarity=Emb(), related_threshold=0.9)
    assert d.top1_among_all.rate >= 0.9 and d.top1_among_test.rate >= 0.9
    assert d.shuffled_top1_among_all.rate <= 0.1 and d.n_candidates == 400
    with pytest.raises(ConfigError, match="overlap"):
        word_decodability(vecs[:350], train, vecs[:5], train[:5], layer=0, similarity=Emb())


def test_forced_naming_prompt_extends_the_exp1_prompt_and_is_graded_on_its_first_sentence(tiny_model_of):
    from introspect_mech.experiments.injected_thoughts.prompt import exp1_prompt
    from introspect_mech.organism.evaluate import FORCED_PREFIX, forced_prompt, grade

    tok = tiny_model_of("llama").tokenizer
    plain, fp = exp1_prompt(tok), forced_prompt(tok)
    assert fp.start == plain.start and fp.rendered.input_ids[:plain.start] == plain.rendered.input_ids[:plain.start]
    assert fp.rendered.text.endswith(FORCED_PREFIX) and len(fp.rendered.input_ids) > len(plain.rendered.input_ids)
    recs = grade([{"condition": "forced_naming", "text": " the sea. Then oceans.", "word": "oceans"},
                  {"condition": "forced_naming", "text": " pencils. Oceans, oceans.", "word": "oceans"},
                  {"condition": "forced_naming", "text": " oceans.", "word": "oceans"},
                  {"condition": "injected", "text": "It is about oceans.", "word": "oceans"}])
    assert [r["success"] for r in recs] == [True, False, True, False]  # only the first sentence counts
    assert [r["named"] for r in recs] == [False, False, True, True]
    assert recs[0]["affirmative"] is None and recs[3]["affirmative"] is False  # the claim is prefilled


def test_cli_defaults_are_the_dataclass_defaults_and_v2_options_give_v2s_digest(monkeypatch, tmp_path):
    """`organism train` with no options trains exactly TrainConfig() (recipe v7, the digest of the stored
    run); v5's and v2's options on the command line give their stored digests; `organism eval` with no
    options evaluates EvalConfig()'s doses. The CLI states no default of its own."""
    import argparse

    import introspect_mech.model_options as mo
    import introspect_mech.organism.evaluate as ev
    import introspect_mech.organism.train as tr
    from introspect_mech.organism import cli as oc
    from introspect_mech.organism.evaluate import EvalConfig

    got: dict = {}
    monkeypatch.setattr(mo, "load_model_from_args", lambda args: None)
    monkeypatch.setattr(tr, "train_organism", lambda model, cfg, out, progress=True: got.__setitem__("train", cfg))
    monkeypatch.setattr(ev, "evaluate_organism", lambda model, cfg, out, progress=True: got.__setitem__("eval", cfg))
    ap = argparse.ArgumentParser()
    oc.add_organism_parser(ap.add_subparsers())
    fp = "0e1771b084d58d9f"

    def run(*argv: str) -> None:
        args = ap.parse_args(["organism", *argv])
        args.func(args)

    run("train", "--out", str(tmp_path / "a"))
    assert got["train"].digest(fp) == TrainConfig().digest(fp) == V7_DIGEST  # runs/organism/adapter.json
    run("train", "--out", str(tmp_path / "c"), "--steps", "600", "--lr", "6e-4", "--precision", "fp32",
        "--mix", "concept=0.65,none=0.1,random=0.15,question=0.1")
    assert got["train"].digest(fp) == "4927746659af95d9"  # runs/organism-v5/adapter.json
    run("train", "--out", str(tmp_path / "b"), "--steps", "300", "--lr", "4e-4", "--n-english", "3000",
        "--precision", "fp32", "--mix", "concept=0.45,none=0.2,random=0.15,question=0.2")
    assert got["train"].digest(fp) == "2e602a86483a7e60"  # runs/organism-v2/adapter.json
    run("eval")
    assert got["eval"].doses == EvalConfig().doses == [0.5, 0.85]


def test_bf16_training_precision_matches_fp32_closely_and_restores_the_base_weights(tiny_model_of, tmp_path):
    """``precision="bf16"``: the loss of a batch is float32's within bfloat16 rounding (and not identical —
    the products really run in bfloat16); inside, the frozen linear weights are bfloat16 and the residual
    stream (the tied embedding) stays float32; after training the base model's weights are its own again,
    bit for bit."""
    from introspect_mech.organism.train import frozen_weights_in

    model = tiny_model_of("llama")
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup=1, rank=4, alpha=8, seed=2, checkpoint_every=100,
                      recipe=RecipeConfig(**SMALL))
    assert cfg.precision == "bf16"
    recipe, _, _ = build_recipe(model, cfg, log=_quiet)
    batch = recipe.batch(0, 8)
    with torch.no_grad():
        full = example_loss(model, batch)[0].item()
        with frozen_weights_in(model, "bf16") as autocast:
            assert model.hf.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
            assert model.hf.get_input_embeddings().weight.dtype == torch.float32
            with autocast():
                half = example_loss(model, batch)[0].item()
        with frozen_weights_in(model, "fp32") as autocast, autocast():
            again = example_loss(model, batch)[0].item()
    assert half != full and abs(half - full) < 0.02 * abs(full), (half, full)
    assert again == full
    train_organism(model, cfg, tmp_path / "a", progress=False, log=_quiet)
    after = model.hf.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    fp32 = train_organism(model, TrainConfig(**{**cfg.__dict__, "precision": "fp32"}), tmp_path / "b",
                          progress=False, log=_quiet)
    assert fp32.meta["config"]["precision"] == "fp32"
    ta, tb = adapters.read_adapter(tmp_path / "a")[0], adapters.read_adapter(tmp_path / "b")[0]
    assert not all(torch.equal(ta[k], tb[k]) for k in ta)  # the precision is really used
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="fp16").check_options()
