"""Concordance heads on the Exp 3 (prefill intent) prompt: which heads react when the injected "prior
intention" matches the prefilled word, and do they carry the intent claim?

Setup. The assistant turn is prefilled with a word unrelated to the sentence; the user then asks
"Did you mean to say that, or was it an accident?". Under *matched* injection the prefilled word's
concept vector is added (``strength`` × vector, residual output of ``injection_layer``) on the
sentence tokens, before the prefill; under *none* nothing is added. Every pair runs under both, in
one batched forward with attention weights recorded at every layer (eager attention).

Per (layer, head) and pair, three features:

(a) ``attn_word``: attention mass from the answer position (the last prompt token, where the reply
    starts) to the prefilled-word tokens;
(b) ``attn_sentence``: the same to the sentence tokens;
(c) ``qk_sentence``: a QK contrast from the prefilled-word query positions to the sentence keys.
    Attention weights are ``w_qk = softmax_k(s_qk)``, so ``log w_qk = s_qk − logsumexp_k' s_qk'``:
    the log weight differs from the raw QK logit by a per-query constant. A *difference of means
    over keys of the same query* cancels it, so
    ``mean_{k ∈ sentence} log w_qk − mean_{k ∈ other earlier keys} log w_qk``
    equals the same contrast of raw QK logits (scaled, RoPE'd, with any additive mask) — softmax-
    invariant, derived from the weights alone. "Other earlier keys" are the positions strictly before
    the query that are not sentence tokens (chat-template tokens, the instruction, the BOS/sink,
    earlier word pieces). Averaged over the word's query positions. A weight that is exactly 0 (a
    logit gap above ~87 nats in float32, or a key masked out, e.g. outside a sliding window) has no
    finite log; it is floored at float32's smallest normal number and the floored fraction is
    reported (``floored_fraction``).

Heads at layers ≤ ``injection_layer`` cannot change (the vector enters after their layer), so all
change is downstream. Heads are ranked by the mean over pairs of the paired difference
(matched − none), with a t interval over pairs. A third condition, Exp 3's control — another
concept's vector (``exp.other[i]``), same place and strength — gives each top head's ``other_change``
(other − none) and ``matched_minus_other``: a head that reacts to *any* perturbation of the sentence
is not a concordance head.

Causal test (the ``analyses.circuits`` harness). Metric: mean intent-vs-apology log-odds (log Σ
P(intent replies) − log Σ P(apology replies), teacher-forced, exactly Exp 3's logit measure) under
matched injection — optionally also under none and their difference (``with_none``). Hypothesis:
the top-k heads by the paired change of ``rank_feature`` — by default (c), the QK concordance
contrast the paper's mechanism proposes ("heads whose query at the prefilled word attends to the
earlier intention"); (a) and (b) are options. Interventions ``zero`` (the harness's), ``mean``
(mean head output over the no-injection prompts) and ``patch`` (the head's output from the
no-injection run of the same rows: the mediation test — how much of the injection's effect flows
through these heads). Every intervention acts from the sentence (the injection window) on, so the
tokens before it, the attention sink among them, keep their values.
Null: k random heads, 99 sets by default (minimum attainable p 0.01). By default
(``null="same_layers"``) each is a random other head at the same layer as a hypothesis head (the
harness's sampler): the null matches the hypothesis layer by layer. ``"downstream"`` draws from
all layers after the injection layer (where the hypothesis heads necessarily sit: under ``patch``
an upstream head is an exact no-op and would shrink the null); ``"any"`` from every layer. p is
the harness's permutation p, centred on the null median. The heads are picked on the same pairs by
default; ``held_out`` runs the causal test on the next pairs of the protocol instead (selection on
the test pairs' noise inflates the effect).

Speed. The four replies of a pair share the prompt, so by default they are *packed* into one row:
prompt, then each reply, with a 4D attention mask under which a reply sees the prompt and its own
earlier tokens only, and position ids restarting after the prompt. That is the same computation as
four separate rows (checked against ``PrefillIntent.execute_logits`` in the tests) at about a third
of the tokens. Models with sliding-window layers fall back to separate rows (a custom 4D mask would
bypass their window).
"""

from .causal import INTERVENTIONS, NULLS, causal_test, downstream_null
from .features import FEATURE_TITLES, FEATURES, AttentionFeatures, head_attention_features, qk_contrast
from .inputs import CONDITIONS, PairInput, exp3_pairs
from .metric import QUANTITIES, HeadValues, IntentLogOdds
from .run import build_parser, main, redraw, run

__all__ = ["CONDITIONS", "FEATURES", "FEATURE_TITLES", "INTERVENTIONS", "NULLS", "QUANTITIES", "AttentionFeatures",
           "HeadValues", "IntentLogOdds", "PairInput", "build_parser", "causal_test", "downstream_null",
           "exp3_pairs", "head_attention_features", "main", "qk_contrast", "redraw", "run"]
