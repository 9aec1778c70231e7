"""An experiment declared in this file alone (config, protocol, record, report, spec) is run, resumed, reported
and compared through the command line on a tiny model saved to disk: adding an experiment touches nothing
but its own module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from introspect_mech.cli import main
from introspect_mech.experiments import registry
from introspect_mech.experiments.base import SweepExperiment, SweepOptions, strengths_field
from introspect_mech.experiments.options import layer_list, opt
from introspect_mech.experiments.spec import ExperimentSpec, Headline, RunMeta, series_of
from introspect_mech.inject import Injection, Window, random_like
from introspect_mech.prompts import Turn
from introspect_mech.records import TrialRecord
from introspect_mech.runner import Trial, TrialInput
from introspect_mech.seeds import seed_from
from introspect_mech.stats import Rate, format_rate

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = ("dust", "ocean", "tree", "lamp")


@dataclass
class ToyConfig(SweepOptions):
    layers: list[Any] = field(default_factory=lambda: [1], metadata=opt("injection layers", parse=layer_list))
    strengths: list[float] = strengths_field([2.0])
    n_words: int = field(default=2, metadata=opt("words used (max 4)"))

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.n_words <= len(WORDS):
            from introspect_mech.errors import ConfigError

            raise ConfigError(f"--n-words must be between 1 and {len(WORDS)}")


class ToyExperiment(SweepExperiment):
    """Each word: a clean reply and one per (layer, strength) with a seeded random direction injected."""

    name = "toy"

    def trials(self) -> list[Trial]:
        out = []
        for w in WORDS[: self.cfg.n_words]:
            out.append(Trial(self.name, "clean", w))
            out += [Trial(self.name, "injected", w, L, s) for L in self.layers for s in self.strengths]
        return out

    def prepare(self, model) -> None:
        self.check_model(model)

    def build(self, model, trial: Trial) -> TrialInput:
        self.check_model(model)
        prompt = self.render([Turn("user", "Name one thing.")])
        injs = []
        if trial.condition == "injected":
            v = random_like(torch.ones(model.arch.d_model), seed_from("toy", trial.concept, trial.layer))
            injs = [Injection(v, trial.layer, trial.strength, Window.all(), label=trial.concept)]
        return TrialInput(prompt, injs, 3, {"word": trial.concept})


class ToyRecord(TrialRecord):
    response: str
    word: str


class ToyReport:
    def make_grader(self, name: str, *, judge_url: str | None, cache_path: Path) -> None:
        return None

    def grade(self, records: Sequence[dict], grader: None) -> list[bool]:
        return [bool(r["response"].strip()) for r in records]

    def summarize(self, records: Sequence[dict], grades: Sequence[bool], meta: RunMeta) -> dict:
        cells: dict[tuple, list[bool]] = {}
        for r, g in zip(records, grades):
            cells.setdefault((r["condition"], r["layer"], r["strength"]), []).append(g)
        rows = [{"condition": c, "layer": L, "strength": s, "depth": None, "replied": Rate.from_bools(v)}
                for (c, L, s), v in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))]
        return {"cells": rows, "clean": next(r["replied"] for r in rows if r["condition"] == "clean")}

    def table(self, summary: dict) -> str:
        return "\n".join(["| condition | layer | strength | replied |", "|---|---|---|---|"]
                         + [f"| {r['condition']} | {r['layer']} | {r['strength']} | {format_rate(r['replied'])} |"
                            for r in summary["cells"]])

    def figures(self, summary: dict, out_dir: Path, png: bool) -> dict:
        from introspect_mech import plots

        inj = [r for r in summary["cells"] if r["condition"] == "injected"]
        return {"replied": plots.save_figure(plots.rate_vs_layer(inj, metric="replied", title="toy", baseline=summary["clean"]),
                                             out_dir / "toy_replied", png=png)}

    def headline(self, summary: dict) -> Headline:
        inj = [r for r in summary["cells"] if r["condition"] == "injected"]
        return Headline((series_of("replied (injected)", inj, "replied", baseline=summary["clean"],
                                   baseline_label="no injection"),), (("replied (clean)", summary["clean"]),))


TOY = ExperimentSpec(name="toy", cli_name="toy-exp", title="A toy experiment", help="replies under random injections",
                     config=ToyConfig, protocol=ToyExperiment, record=ToyRecord, report=ToyReport)


@pytest.fixture
def toy():
    registry.register(TOY)
    try:
        yield TOY
    finally:
        registry.unregister(TOY.name)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny models on disk (two architectures), loaded by the CLI as --model PATH."""
    from conftest import build_tiny_hf, make_tiny_tokenizer

    out = {}
    for arch in ("llama", "qwen2"):
        tok = make_tiny_tokenizer()
        folder = tmp_path_factory.mktemp(arch)
        build_tiny_hf(arch, tok).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[arch] = str(folder)
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]


def _run(model: str, out: Path, *more: str) -> int:
    return main(["run", "toy-exp", "--model", model, "--out", str(out), "--layers", "1,2", "--no-progress",
                 "--batch-size", "2", *more])


def test_a_toy_experiment_runs_resumes_reports_and_compares_through_the_cli(toy, model_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(model_dirs["llama"], run, "--n-words", "3") == 0
    recs = _records(run)
    assert len(recs) == 3 * (1 + 2) and {r["experiment"] for r in recs} == {"toy"}
    assert all(isinstance(r["word"], str) and isinstance(r["layer"], (int, type(None))) for r in recs)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"] == "toy" and manifest["config"]["n_words"] == 3 and manifest["config"]["layers"] == [1, 2]

    # resume: an interrupted run (the last batch lost) regenerates only what is missing, identically
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    (run / "results.jsonl").write_text("".join(lines[:-2]))
    capsys.readouterr()
    assert _run(model_dirs["llama"], run, "--n-words", "3") == 0
    assert f"({len(recs) - 2} already done, 2 generated" in capsys.readouterr().out
    assert sorted(_records(run), key=lambda r: r["trial_id"]) == sorted(recs, key=lambda r: r["trial_id"])
    # another setting is refused, naming it
    assert _run(model_dirs["llama"], run, "--n-words", "2") == 2
    err = capsys.readouterr().err
    assert "n_words (stored 3, this command 2)" in err and "same options (--n-words 3)" in err, err

    # report: the toy's own table, figure and HTML page
    assert main(["report", str(run), "--no-png"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "toy" and (run / "report.html").exists()
    assert "| injected | 2 | 2.0 |" in (run / "summary.md").read_text()
    assert Path(summary["figures"]["replied"]["html"]).exists()

    # a second model's run, compared side by side
    other = tmp_path / "other"
    assert _run(model_dirs["qwen2"], other, "--n-words", "2") == 0
    assert main(["report", str(run), "--compare", str(other), "--no-png"]) == 0
    md = (run / "summary.md").read_text()
    names = [json.loads((d / "manifest.json").read_text())["model"]["name"] for d in (run, other)]
    assert "**replied (injected)**" in md and all(f"| {n}" in md or f"`{n}`" in md for n in names)
    summary = json.loads((run / "summary.json").read_text())
    assert [r["run"] for r in summary["compare"]["runs"]] == [str(run), str(other)]
    assert any(k.startswith("compare_") for k in summary["figures"])


def test_options_of_other_experiments_are_refused_in_one_line(toy, model_dirs, tmp_path, capsys):
    assert main(["run", "toy-exp", "--n-pairs", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: toy-exp does not use --n-pairs; remove it (its options: --format, --system, --layers, "
                   "--strengths, --n-words)"]
    assert not (tmp_path / "r").exists()
    assert main(["run", "injected-thoughts", "--n-words", "3", "--out", str(tmp_path / "r")]) == 2
    assert "injected-thoughts does not use --n-words" in capsys.readouterr().err


def test_the_registry_refuses_a_second_experiment_of_the_same_name(toy):
    from introspect_mech.errors import ConfigError

    with pytest.raises(ConfigError, match="clashes"):
        registry.register(TOY)
    assert registry.by_cli_name("toy-exp") is TOY and registry.get("toy") is TOY
