"""`distill-study reproduce`: the seed presets follow their papers, claims get verdicts, and one
reproduction runs end to end (smoke scale) into reproduction.md/json and MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis.reproduction import evaluate, render, tally
from analysis.study import Study
from search_spaces._claims import Claim
from studies import plan
from studies.cli import main
from studies.options import StudyOptions, resolve
from studies.reproduce import presets
from studies.spaces import list_spaces, load_space
from tracking.client import resolve_tracking_uri

PAPERS = ["000", "001", "002", "003", "004"]
SETTING = {
    "paper": "004", "title": "t", "scale": "laptop", "data": "d", "models": "m", "epochs": 1,
    "paper_epochs": 2, "seeds": 3, "arms": ["a"], "study": "s", "parent_run_id": "p",
    "date": "today", "machine": "here",
}  # fmt: skip


def invoke(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main, list(args))
    return out.exit_code, out.output


def test_list_shows_the_claims_of_every_seed_paper() -> None:
    code, output = invoke("reproduce", "--list")
    assert code == 0, output
    lines = output.splitlines()
    assert len(lines) >= 8
    assert {line[:3] for line in lines} == set(PAPERS)
    assert all("scale]" in line for line in lines)


def test_an_unknown_paper_is_one_line_and_exit_2() -> None:
    code, output = invoke("reproduce", "007")
    assert code == 2 and output.count("\n") == 1
    assert output.startswith("error: no seed paper '007' to reproduce; use one of: 000, 001")


# ---------------------------------------------------------------------------------------------
# The presets follow their papers.


@pytest.mark.parametrize("paper", PAPERS)
@pytest.mark.parametrize("scale", ["laptop", "paper"])
def test_reproduction_presets_run_every_arm_in_full_and_no_arm_twice(
    paper: str, scale: str
) -> None:
    space = presets()[paper]
    settings = resolve(StudyOptions(space=space.name, scale=scale), space)
    assert (settings.sampler, settings.scheduler) == ("grid", "none")  # no early stopping
    assert settings.trials == len(space.grid["arm"])
    study_plan = plan.build(StudyOptions(space=space.name, scale=scale), space, settings, "/t")
    plan.check(space, study_plan, list(space.grid_points()))  # raises on two equal arms
    epochs = {study_plan.config(p, 0).run.epochs for p in space.grid_points()}
    assert epochs == {space.laptop_epochs if scale == "laptop" else space.base["run"]["epochs"]}


def test_search_presets_keep_early_stopping() -> None:
    searched = [s for s in list_spaces() if s.sampler != "grid"]
    assert searched and all(
        resolve(StudyOptions(space=s.name), s).scheduler == "asha" for s in searched
    )
    assert (
        resolve(
            StudyOptions(space="quickstart", scheduler="none"), load_space("quickstart")
        ).scheduler
        == "none"
    )


def arm_configs(paper: str, scale: str = "paper") -> dict[str, Any]:
    space = presets()[paper]
    options = StudyOptions(space=space.name, scale=scale)
    p = plan.build(options, space, resolve(options, space), "/t")
    return {point["arm"]: p.config(point, 0) for point in space.grid_points()}


def test_seed_000_temperatures_and_optimiser_configs() -> None:
    arms = arm_configs("000")
    for name, cfg in arms.items():
        method, optim = name.split("-")
        assert cfg.method.temperature == {"dml": 1.0, "kd": 4.0, "scratch": 4.0}[method]
        assert (cfg.optim.name, cfg.teacher.optim.name) == (optim, optim)
    adam, adamw = arms["kd-adam"], arms["dml-adamw"]
    assert (adam.optim.lr, adam.schedule.name) == (0.01, "constant")
    assert (adamw.schedule.name, adamw.schedule.max_lr, adamw.schedule.pct_start) == (
        "onecycle",
        0.005,
        0.1,
    )
    assert adam.method.alpha == 0.5 and adam.run.batch_size == 1024 and adam.run.epochs == 100


def test_seed_002_follows_the_official_code() -> None:
    arms = arm_configs("002")
    assert {c.method.temperature for c in arms.values()} == {3.0}
    assert {c.dkel.ema_decay for c in arms.values()} == {0.999}
    exp = arms["dkel-exp-0.5"]
    assert (exp.dkel.beta, exp.dkel.decay, exp.method.peers, exp.model.name) == (
        0.5,
        "exp",
        3,
        "resnet32",
    )
    assert exp.schedule.milestones == [150, 225] and exp.optim.nesterov
    assert {a for a in arms if arms[a].dkel.decay in ("cos", "linear")} == {
        "dkel-cos",
        "dkel-linear",
    }
    large = arms["dkel-exp-2.5"].dkel.beta
    from distill_core.methods.dkel import ensemble_weight

    assert ensemble_weight("exp", large, 2, 300) == 0.0 < ensemble_weight("exp", large, 1, 300)


def test_seed_003_early_stopped_teacher_is_trained_to_completion_on_a_short_schedule() -> None:
    from distill_core.teachers import required_teachers

    arms = arm_configs("003")
    early, snapshot, full = (
        required_teachers(arms[a])[0] for a in ("kd-early", "kd-snapshot", "kd")
    )
    assert (early.spec.run.epochs, early.epoch) == (50, 50)
    assert early.spec.schedule.milestones == [15, 30, 40]  # seed 003's 15/50
    assert (snapshot.spec.run.epochs, snapshot.epoch) == (200, 50)
    assert full.spec == snapshot.spec and full.epoch == 200
    assert len(required_teachers(arms["takd"])) == 2


def test_seed_001_states_its_alpha_in_the_papers_convention() -> None:
    arms = arm_configs("001")
    assert arms["alpha=0"].method.weights == {"ce": 0.0, "mse": 1.0}
    assert arms["alpha=1"].method.weights == {"ce": 1.0, "mse": 0.0}
    paper = arms["alpha=0.5"]
    assert (paper.model.pretrained, paper.teacher.pretrained, paper.teacher.freeze) == (
        "torchvision",
        "torchvision",
        True,
    )


def test_seed_004_lambda_grid_reaches_one_and_laptop_is_harder() -> None:
    lambdas = sorted(c.init.interp_lambda for c in arm_configs("004").values())
    assert lambdas[0] == 0.0 and lambdas[-1] == 1.0 and 0.875 in lambdas
    laptop = next(iter(arm_configs("004", "laptop").values()))
    assert laptop.data.subset == 1000 and laptop.data.augment


# ---------------------------------------------------------------------------------------------
# Verdicts on synthetic runs: each of the three outcomes, per kind of claim.


def fake_study(rows: list[dict[str, Any]]) -> Study:
    runs = pd.DataFrame(rows)
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs["group"] = runs["tags.distill.arm"]
    return Study("fake", "0", "p", {}, runs, client=None)  # type: ignore[arg-type]


def seeds(
    arm: str, metric: str, values: list[float], status: str = "completed", **extra: Any
) -> list[dict[str, Any]]:
    return [
        {"tags.distill.arm": arm, "status": status, f"metrics.{metric}": v, **extra} for v in values
    ]


def difference(a: str, b: str, metric: str = "test_acc", **kw: Any) -> Claim:
    return Claim(
        id=f"{a}-{b}",
        sentence="s",
        source="x",
        paper="y",
        kind="difference",
        metric=metric,
        arms=(a, b),
        **kw,
    )


def test_each_verdict_from_synthetic_seeds() -> None:
    study = fake_study(
        seeds("good", "test_acc", [0.91, 0.92, 0.915, 0.918, 0.912])
        + seeds("base", "test_acc", [0.88, 0.885, 0.879, 0.883, 0.881])
        + seeds("noisy", "test_acc", [0.86, 0.93, 0.87, 0.95, 0.90])
        + seeds("cancelled", "test_acc", [0.99], status="cancelled")  # never counted
    )
    results = evaluate(
        study,
        [
            difference("good", "base"),  # clearly better
            difference("base", "good"),  # clearly worse
            difference("noisy", "base"),  # within noise
            difference("base", "good", threshold=-0.05),  # within a 5-point margin: "no worse"
        ],
    )
    assert [r.verdict.outcome for r in results] == [
        "reproduced",
        "not reproduced",
        "inconclusive",
        "reproduced",
    ]
    assert results[0].arms["good"].n == 5 and results[0].effect_size > 2
    assert results[2].verdict.seeds_needed is not None and results[2].verdict.seeds_needed > 5
    assert "crosses 0" in results[2].verdict.sentence
    assert tally(results) == {"reproduced": 2, "not reproduced": 1, "inconclusive": 1}


def test_crash_claims_compare_shares_of_seeds_with_a_collapse() -> None:
    crash = {"metrics.crashed_epochs": 2.0}
    study = fake_study(
        seeds("dml", "test_acc", [0.5] * 5, **crash)
        + seeds("kd", "test_acc", [0.9] * 5, **{"metrics.crashed_epochs": 0.0})
        + seeds("dml2", "test_acc", [0.5, 0.9], status="crashed", **{"metrics.crashed_epochs": 0.0})
    )
    five, two = evaluate(
        study, [difference("dml", "kd", "crashed"), difference("dml2", "kd", "crashed")]
    )
    assert five.verdict.outcome == "reproduced" and five.estimate == 1.0 and five.low > 0.3
    assert five.arms["kd"].high > 0.4  # 0 of 5 does not exclude a 40% crash rate (Wilson)
    assert two.estimate == 1.0  # a run that ended crashed counts, whatever crashed_epochs says
    assert two.verdict.outcome == "reproduced" or two.verdict.outcome == "inconclusive"


def test_level_and_trend_claims() -> None:
    rows = []
    for lam, agreement in [(0.0, 0.80), (0.5, 0.86), (1.0, 0.95)]:
        for i, noise in enumerate((-0.01, 0.0, 0.01)):
            rows.append({
                "tags.distill.arm": f"lambda={lam:g}", "status": "completed",
                "params.init.interp_lambda": str(lam), "metrics.test_agreement": agreement + noise,
                "metrics.train_agreement": agreement + noise + 0.1 * lam * (1 + i),
            })  # fmt: skip
    study = fake_study(rows)
    arms = ("lambda=0", "lambda=0.5", "lambda=1")
    common = {
        "sentence": "s",
        "source": "x",
        "paper": "y",
        "arms": arms,
        "axis": "init.interp_lambda",
    }
    low, rises, gap, flat = evaluate(
        study,
        [
            Claim(id="low", sentence="s", source="x", paper="y", kind="level", metric="test_agreement",
                  arms=("lambda=0",), direction="less", threshold=0.95),
            Claim(id="rise", kind="trend", metric="test_agreement", **common),
            Claim(id="gap", kind="trend_gap", metric="train_agreement", other="test_agreement", **common),
            Claim(id="flat", kind="trend", metric="test_agreement", direction="less", **common),
        ],
    )  # fmt: skip
    assert low.verdict.outcome == "reproduced" and low.estimate == pytest.approx(0.80)
    assert rises.verdict.outcome == "reproduced" and rises.estimate == pytest.approx(0.15)
    assert gap.verdict.outcome == "reproduced" and gap.estimate == pytest.approx(0.2)
    assert flat.verdict.outcome == "not reproduced"
    text = render([low, rises, gap, flat], SETTING, {})
    assert "- test: mean `test_agreement` of `lambda=0` < 95 points" in text
    assert "- test: slope of `train_agreement` minus slope of `test_agreement`" in text


# ---------------------------------------------------------------------------------------------
# End to end, at smoke scale: a real study, a verdict per claim, files and MLflow artifacts.


def test_reproduce_writes_a_verdict_per_claim(tmp_path: Path, ray_session: str) -> None:
    where = ["--storage", str(tmp_path / "studies"), "--tracking-uri", str(tmp_path / "mlruns")]
    code, output = invoke("reproduce", "001", "--smoke-test", "--seeds", "2", *where)
    assert code == 0, output
    folder = tmp_path / "studies" / "reproduce-001-laptop-smoke"
    report = (folder / "reproduction.md").read_text()
    data = json.loads((folder / "reproduction.json").read_text())
    claims = presets()["001"].claims
    assert [c["id"] for c in data["claims"]] == [c.id for c in claims]
    assert sum(data["tally"].values()) == len(claims)
    assert data["setting"]["scale"] == "smoke test" and "no verdict here" in report
    for claim in data["claims"]:
        assert claim["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        assert f"## `{claim['id']}`" in report and claim["arms_summary"][claim["arms"][0]]["n"] == 2
    assert f"reproduction of 001: {data['tally']['reproduced']} reproduced" in output
    client = MlflowClient(resolve_tracking_uri(str(tmp_path / "mlruns")))
    parent = data["setting"]["parent_run_id"]
    logged = {f.path for f in client.list_artifacts(parent, "reproduction")}
    assert {"reproduction/reproduction.md", "reproduction/reproduction.json"} <= logged
    assert any(p.endswith(".png") for p in logged)
