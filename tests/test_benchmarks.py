"""Smoke runs of the benchmark scripts at tiny sizes, so they keep working between the
sessions that have the hardware to run them for real. No timing is asserted."""

import json
import math
import re

import pytest
import torch

from benchmarks import baselines, bench_anchors, bench_engine, bench_kernels
from benchmarks.report import parse_size, write_report


def test_kernel_benchmark_quick_run_writes_reports(tmp_path):
    result = bench_kernels.run([parse_size("64K")], torch.device("cpu"), quick=True)
    impls = {row["impl"] for row in result["rows"]}
    assert "torch.optim.Adam(fused=True)" in impls and "reference (torch backend)" in impls
    assert all(math.isfinite(row["median_ms"]) and row["median_ms"] > 0 for row in result["rows"])
    text = write_report(result, bench_kernels.COLUMNS, "kernels", tmp_path)
    assert result["device"] in text
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert len(saved["rows"]) == len(result["rows"])
    assert (tmp_path / "kernels.csv").read_text().startswith("op,impl,layout")


def test_engine_benchmark_quick_run():
    result = bench_engine.run([3], torch.device("cpu"), rounds=1, students=["MLP"])
    methods = {row["method"] for row in result["rows"]}
    optional = ({baselines.TORCHOPT} if baselines.torchopt else set()) | (  # where installed
        {baselines.HIGHER} if baselines.higher else set())
    assert methods == {"unrolled autograd", "engine[torch]", "engine[cpu]",
                       "engine[cpu, compiled]"} | optional
    for row in result["rows"]:
        assert row["seconds"] > 0 and math.isfinite(row["peak_mb"])
        assert (row["time_vs_unrolled"] == 1) == (row["method"] == "unrolled autograd")


def test_engine_benchmark_with_the_users_sgd():
    """--optimizer sgd-nesterov on the digits example's ConvNet: every method differentiates
    the same torch.optim.SGD (higher's copy and TorchOpt's MetaSGD too, where installed) and
    agrees with unrolled autograd to float32 rounding; no compiled engine (Adam only)."""
    result = bench_engine.run([3], torch.device("cpu"), rounds=1, students=["digits ConvNet"],
                              optimizer="sgd-nesterov")
    assert result["optimizer"] == "sgd-nesterov"
    optional = ({baselines.TORCHOPT} if baselines.torchopt else set()) | (  # where installed
        {baselines.HIGHER} if baselines.higher else set())
    assert {row["method"] for row in result["rows"]} == {"unrolled autograd", "engine[torch]",
                                                         "engine[cpu]"} | optional
    assert all(row["seconds"] > 0 and math.isfinite(row["peak_mb"]) for row in result["rows"])
    assert all(row["grad_vs_unrolled"] < 1e-4 for row in result["rows"])


def test_engine_benchmark_runs_the_engine_alone_past_the_memory_budget(capsys, monkeypatch):
    """Where unrolled autograd would outgrow --memory-budget-mb, it (and TorchOpt, which also
    keeps every step) is skipped before it allocates, and the engine runs alone, without
    ratios to a baseline that did not run."""
    from benchmarks import students

    ptb = "LM distill (PTB)"
    assert students.unrolled_fits(ptb, 50) and not students.unrolled_fits(ptb, 100)
    assert students.unrolled_fits(ptb, 100, budget_mb=23_000)
    assert not students.unrolled_fits(ptb, 50, torch.float64)
    monkeypatch.setitem(students.UNROLLED_MB_PER_STEP, "MLP", 1)
    result = bench_engine.run([3], torch.device("cpu"), rounds=1, students=["MLP"],
                              memory_budget_mb=2, optimizer="sgd")  # sgd: nothing to compile
    assert {row["method"] for row in result["rows"]} == {"engine[torch]", "engine[cpu]"}
    assert all("time_vs_unrolled" not in row and row["seconds"] > 0 for row in result["rows"])
    assert "unrolled autograd" in capsys.readouterr().err


@pytest.mark.parametrize("bench", [bench_engine, bench_anchors])
def test_engine_benchmarks_refuse_bad_options_by_name(bench, capsys):
    """Refused before anything runs, with the option's name: no traceback from a step count
    that int() cannot read, no zero-round medians."""
    bad = [("--memory-budget-mb", value) for value in ("0", "-3", "nan", "12GB")]
    bad += [("--steps", value) for value in ("10,x", "0", "50,-1", "", "10,,20")]
    bad += [("--students", "MLP,no such student")]
    if bench is bench_engine:
        bad += [("--rounds", "0"), ("--methods", "higher,engine[gpu]"), ("--methods", ",")]
    for option, value in bad:
        with pytest.raises(SystemExit) as exit_info:
            bench.main([option, value])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in error
        assert (option in error if option != "--students" else "no such student" in error)


def test_benchmarks_refuse_missing_data_and_bad_counts_by_name(tmp_path, monkeypatch, capsys):
    """A data folder without the data set, and counts that cannot run, end in one line that
    names the option (exit 2, no traceback) before anything is trained or timed."""
    from benchmarks import bench_distill

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/farzi_fast to fall back on
    empty = str(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    calls = [(bench_engine, ["--students", "MLP,SASRec distill (ML-100K)", "--data", empty],
              "--data"),
             (bench_anchors, ["--students", "LM distill (PTB)", "--data", empty], "--data"),
             (bench_distill, ["--dataset", "ml-100k", "--data", empty] + out, "--data"),
             (bench_distill, ["--dataset", "ptb", "--data", empty, "--table-only"] + out,
              "--data"),
             (bench_distill, ["--interactions", str(tmp_path / "no-log.txt")] + out,
              "--interactions")]
    calls += [(bench_distill, ["--dataset", "ml-100k", option, value] + out, option)
              for option, value in [("--seeds", "-1"), ("--draws", "0"),
                                    ("--outer-steps", "0"), ("--threads", "two")]]
    for bench, argv, option in calls:
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in error, argv
        assert f"error: {option}" in error or f"argument {option}" in error, error
    assert not (tmp_path / "out").exists()


def test_parse_size():
    assert parse_size("4M") == 4 << 20 and parse_size("64K") == 65536 and parse_size("7") == 7


def tiny_distill_benchmark(data_dir, monkeypatch, **overrides):
    """bench_distill with students trained for 4 steps, and a tiny cpu-preset configuration
    (`overrides` on top) with its ML-100K task: (bench_distill, task, cfg)."""
    from benchmarks import bench_distill
    from farzi_fast.distillation.presets import preset
    from farzi_fast.training.protocol import Recipe
    from farzi_fast.training.tasks import load_task

    tiny = Recipe(max_steps=4, eval_every=2, patience=1)
    monkeypatch.setattr(bench_distill, "VALIDATION", tiny)
    monkeypatch.setattr(bench_distill, "EVALUATION", tiny)
    cfg = preset("ml-100k", "cpu").settings() | dict(
        max_len=8, size=(3, 4), dim=8, inner_steps=2, outer_steps=2, pretrain_steps=3,
        teacher_steps=5, validate_every=1, outer_batch=16, preset="cpu") | overrides
    return bench_distill, load_task("ml-100k", data_dir, cfg["max_len"]), cfg


def test_distill_benchmark_variants_name_only_known_settings():
    """A misspelt setting must not reach a run as nothing (DistillConfig would refuse it
    only when that variant runs)."""
    from benchmarks import bench_distill as b
    from farzi_fast.distillation.presets import preset
    known = set(preset("ml-100k", "cpu").settings()) | set(b.VARIANT_ONLY)
    assert {v: set(o) - known for v, o in b.VARIANTS.items() if set(o) - known} == {}
    known_students = set(b.known_students())
    assert {v: set(o["students"]) - known_students for v, o in b.VARIANTS.items()
            if set(o.get("students", ())) - known_students} == {}


def test_distill_benchmark_variants_keep_the_preset_they_were_measured_under():
    """ML-100K's cpu preset changed; the variants measured as overrides of the one before
    (the pool's loops) must still mean what their rows measured."""
    from benchmarks import bench_distill as b
    from farzi_fast.distillation.presets import preset as preset_of

    def preset(dataset, name):
        return preset_of(dataset, name).settings()

    def run_settings(cfg, variant):
        settings = b.run_config(cfg, variant, 0).as_dict()
        del settings["seed"]
        return settings

    lead = "teacher-uniform-0.5-scratch-100-outer-lr-0.1-inner-eps-1e-4"
    now = b.variant_preset("ml-100k", "cpu", "default")
    assert now == preset("ml-100k", "cpu")
    pool = run_settings(b.variant_preset("ml-100k", "cpu", "pool"), "pool")
    assert (pool["inner_steps"], pool["outer_steps"], pool["pretrained_students"],
            pool["pretrain_steps"], pool["uniform_share"], pool["inner_eps"]) == (
                20, 200, 2, 400, 0.0, 1e-8)
    assert run_settings(b.variant_preset("ml-100k", "cpu", "latent8"), "latent8") == (
        pool | dict(latent_dim=8))
    # the preset is the variant it was chosen from, at its own budget: their rows are one run
    assert run_settings(b.variant_preset("ml-100k", "cpu", lead), lead) == (
        run_settings(now, "default") | dict(outer_steps=200))
    for dataset, name in (("ptb", "cpu"), ("ptb", "paper")):
        assert b.variant_preset(dataset, name, "teacher-1500") == preset(dataset, name)
    # variants added since (among them the paper's ablations re-measured over it) are
    # overrides of the preset as it is
    for variant, change in (("uniform-0.25", dict(uniform_share=0.25)),
                            ("factorised-8-outer-lr-0.01", dict(latent_dim=8, outer_lr=0.01)),
                            ("sgd-inner-lr-3", dict(inner_optimizer="sgd", inner_lr=3.0)),
                            ("pretrained-pool", dict(pretrained_students=2, pretrain_steps=400))):
        assert run_settings(b.variant_preset("ml-100k", "cpu", variant), variant) == (
            run_settings(now, "default") | change), variant
    # ML-100K's paper preset changed too: the cpu preset's loops at its sizes and
    # teacher, and its pool loops (the preset's own rows before it) as --variant pool
    loops = ("inner_steps", "inner_lr", "inner_eps", "outer_lr", "outer_batch", "teacher_share",
             "uniform_share", "pretrained_students", "pretrain_steps")
    paper = b.variant_preset("ml-100k", "paper", "default")
    assert paper == preset("ml-100k", "paper")
    assert {k: paper[k] for k in loops} == {k: now[k] for k in loops}
    assert (paper["size"], paper["max_len"], paper["teacher_steps"], paper["outer_steps"],
            paper["validate_every"]) == ([50, 150], 200, 1000, 100, 25)
    paper_pool = b.variant_preset("ml-100k", "paper", "pool")
    assert paper_pool == paper | dict(inner_steps=50, outer_steps=1000, inner_eps=1e-8,
                                      outer_lr=1e-2, uniform_share=0.0, pretrained_students=2,
                                      pretrain_steps=400, validate_every=100)
    assert b.variant_preset("ml-100k", "paper", "teacher-1500") == paper_pool


def test_distill_benchmark_variant_distils_with_every_architecture_it_names(
        data_dir, tmp_path, monkeypatch):
    """--variant sasrec-gru: the inner loops get a SASRec and a GRU4Rec, and the summary is
    kept by the mean validation score of both."""
    from farzi_fast.models import CausalTransformer, GRU4Rec

    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch,
                                                      eval_students=["transformer"])
    given, validated = [], []
    distill = bench_distill.distill

    def recording(students, *args, validate, **kwargs):
        given.append([type(s) for s in students])
        return distill(students, *args, validate=validate, **kwargs)

    fit = bench_distill.fit

    def fit_recording(make, *args, **kwargs):
        result = fit(make, *args, **kwargs)
        validated.append((type(make()), result.valid["HR@10"]))
        return result

    monkeypatch.setattr(bench_distill, "distill", recording)
    monkeypatch.setattr(bench_distill, "fit", fit_recording)
    bench_distill.run(task, cfg, [0], "sasrec-gru", 1, tmp_path, "t", torch.device("cpu"),
                      with_baselines=False)
    assert given == [[CausalTransformer, GRU4Rec]]
    assert [kind for kind, _ in validated[:2]] == [CausalTransformer, GRU4Rec]
    assert len(validated) == 2 * (cfg["outer_steps"] // cfg["validate_every"] + 1)


def test_distill_benchmark_tiny_run_resumes_from_its_results(data_dir, tmp_path, monkeypatch):
    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch)
    seeds = {"validation": set(), "evaluation": set()}
    for name, role in (("fit", "validation"), ("fit_and_test", "evaluation")):
        def recording(*args, _fit=getattr(bench_distill, name), _role=role, **kwargs):
            seeds[_role].add(args[4] if len(args) > 4 else kwargs.get("seed", 0))
            return _fit(*args, **kwargs)
        monkeypatch.setattr(bench_distill, name, recording)
    rows = bench_distill.run(task, cfg, [0], "default", 2, tmp_path, "t", torch.device("cpu"))
    # the students choosing the summary never start from an evaluation student's weights
    assert seeds["validation"] and not seeds["validation"] & seeds["evaluation"], seeds
    sources = {(r["source"], r["student"]) for r in rows}
    assert ("FarziData", "gru") in sources and ("random real sequences", "transformer") in sources
    assert ("teacher-labelled start (0 outer steps)", "transformer") in sources
    assert ("most popular (no model)", "-") in sources
    assert {r["n"] for r in rows if r["source"] == "full data"} == {2}  # one per draw
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    again = bench_distill.run(task, cfg, [0], "default", 2, tmp_path, "t", torch.device("cpu"))
    assert (tmp_path / "t.jsonl").read_text().splitlines() == lines  # nothing redone
    assert again == rows
    from benchmarks.report import write_report

    write_report(dict(device="cpu", torch="x", rows=rows), bench_distill.COLUMNS(task), "t",
                 tmp_path)  # rows of different keys (baselines, summaries) in one CSV
    assert "distill_min" in (tmp_path / "t.csv").read_text().splitlines()[0]
    # --start-only evaluates the very summary a full run starts from
    evaluated = {}
    evaluate = bench_distill.evaluate_source
    monkeypatch.setattr(bench_distill, "evaluate_source", lambda results, task, cfg, source, data,
                        *a, **k: evaluated.setdefault(source, []).append(data))
    bench_distill.run(task, cfg, [0], "default", 2, tmp_path / "full", "t", torch.device("cpu"),
                      with_baselines=False)
    bench_distill.run(task, cfg, [0], "default", 2, tmp_path / "start", "t",
                      torch.device("cpu"), with_baselines=False, start_only=True)
    (from_run, alone), start = evaluated[bench_distill.START], bench_distill.START
    assert torch.equal(from_run, alone) and "FarziData" in evaluated
    monkeypatch.setattr(bench_distill, "evaluate_source", evaluate)
    start_rows = bench_distill.run(task, cfg, [0], "default", 2, tmp_path / "start", "t",
                                   torch.device("cpu"), with_baselines=False, start_only=True)
    assert {(r["source"], r["student"]) for r in start_rows} == {
        (start, arch) for arch in bench_distill.EVAL_STUDENTS}


def test_distill_benchmark_scores_saved_summaries_under_another_recipe(data_dir, tmp_path,
                                                                       monkeypatch):
    """--eval-lr: the summaries already distilled, and their starts, are scored again by
    students trained at another learning rate, into their own results file."""
    import dataclasses

    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch, validate_every=2)
    device = torch.device("cpu")
    bench_distill.run(task, cfg, [0], "default", 1, tmp_path, "t", device, with_baselines=False)
    recipes = []
    fit_and_test = bench_distill.fit_and_test
    monkeypatch.setattr(bench_distill, "fit_and_test",
                        lambda *a, **k: recipes.append(a[3]) or fit_and_test(*a, **k))

    def no_distill(*args, **kwargs):
        raise AssertionError("a saved summary was distilled again")

    monkeypatch.setattr(bench_distill, "distill", no_distill)
    other = cfg | dict(eval_recipe=dataclasses.replace(bench_distill.EVALUATION, lr=3e-3))
    rows = bench_distill.run(task, other, [0], "default", 1, tmp_path, "t-lr", device,
                             with_baselines=False)
    assert {(r["source"], r["student"]) for r in rows} == {
        (source, arch) for source in ("FarziData", bench_distill.START)
        for arch in bench_distill.EVAL_STUDENTS}
    scores = 2 * len(bench_distill.EVAL_STUDENTS)  # the summary and its start, by each student
    assert len(recipes) == scores and {r.lr for r in recipes} == {3e-3}
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == scores  # untouched
    with pytest.raises(SystemExit):
        bench_distill.main(["--dataset", "ml-100k", "--eval-lr", "0", "--out", str(tmp_path)])
    bench_distill.main(["--dataset", "ml-100k", "--data", str(data_dir), "--eval-lr", "3e-3",
                        "--table-only", "--out", str(tmp_path)])  # the report names the recipe
    report = json.loads((tmp_path / "distill-ml-100k-cpu-eval-lr-0.003.json").read_text())
    assert report["config"]["eval_recipe"]["lr"] == 3e-3


def test_distill_benchmark_judges_score_every_source_at_their_own_sizes(data_dir, tmp_path,
                                                                       monkeypatch):
    """--judges: every source is scored by the judges, built at their sizes (not the
    preset's), and only by them; --students names a part of the panel in use, or is refused."""
    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch)
    judges = {  # the panel's shape at a test's sizes
        "transformer-12x3": dict(architecture="transformer", dim=12, heads=2, layers=3),
        "gru-12x2": dict(architecture="gru", dim=12, layers=2),
        "cnn-12x3": dict(architecture="cnn", dim=12, layers=3)}
    monkeypatch.setattr(bench_distill, "JUDGES", judges)
    built = []
    factory = bench_distill.student_factory

    def recording(task, cfg, arch, device):
        make = factory(task, cfg, arch, device)
        return lambda: built.append((arch, make())) or built[-1][1]

    monkeypatch.setattr(bench_distill, "student_factory", recording)
    judged = cfg | dict(eval_students=sorted(bench_distill.JUDGES))
    rows = bench_distill.run(task, judged, [0], "default", 1, tmp_path, "t", torch.device("cpu"),
                             with_baselines=False)
    assert {(r["source"], r["student"]) for r in rows} == {
        (source, arch) for source in ("FarziData", bench_distill.START)
        for arch in bench_distill.JUDGES}
    for arch, student in built:
        if arch in bench_distill.JUDGES:
            sizes = bench_distill.JUDGES[arch]
            depth = {"transformer": lambda: len(student.blocks),
                     "gru": lambda: student.gru.num_layers,
                     "cnn": lambda: len(student.convs) // 2}[sizes["architecture"]]()
            assert (student.embed.shape[1], depth) == (sizes["dim"], sizes["layers"])
    assert {a for a, _ in built} == set(bench_distill.JUDGES) | {"transformer"}  # + the run's
    command = ["--dataset", "ml-100k", "--data", str(data_dir), "--table-only",
               "--out", str(tmp_path)]
    for argv in (["--judges", "--students", "transformer"], ["--students", "gru-12x2"]):
        with pytest.raises(SystemExit) as refused:
            bench_distill.main(command + argv)
        assert refused.value.code == 2
    bench_distill.main(command + ["--judges"])
    report = json.loads((tmp_path / "distill-ml-100k-cpu-judges.json").read_text())
    assert report["config"]["eval_students"] == sorted(bench_distill.JUDGES)


def test_distill_benchmark_presets_keep_their_summaries_apart():
    """With one file name for both, a paper-preset run would take the cpu preset's stored
    summary of the same variant and seed for its own, and score it as distilled."""
    from types import SimpleNamespace

    from benchmarks import bench_distill
    task = SimpleNamespace(name="ml-100k")
    stems = {name: bench_distill.summary_stem(task, {"preset": name}, "default", 0)
             for name in ("cpu", "paper")}
    assert stems == {"cpu": "farzi-ml-100k-default-seed0",  # the stored cpu summaries' names
                     "paper": "farzi-ml-100k-paper-default-seed0"}


def test_distill_benchmark_table_mixes_summaries_distilled_and_scored_from_files(tmp_path):
    """A seed distilled in this run beside one scored from its stored file (which has no
    timing) and one resumed from a checkpoint (timed in part): the table times the first
    alone and still averages all three; a source distilled only in parts has no time."""
    from types import SimpleNamespace

    from benchmarks import bench_distill
    results = bench_distill.Results(tmp_path / "t.jsonl")
    for seed, extra in ((1, dict(distill_seconds=120.0, selected_step=75)), (0, {}),
                        (2, dict(distill_seconds=30.0, selected_step=50, resumed=True))):
        results.add(dict(source="FarziData", arch="gru", seed=seed, tokens=10,
                         test={"HR@10": 0.1 + seed / 10}, **extra))
    results.add(dict(source="cut", arch="gru", seed=0, tokens=10, test={"HR@10": 0.1},
                     distill_seconds=30.0, selected_step=50, resumed=True))
    task = SimpleNamespace(metric="HR@10", higher_is_better=True)
    row, cut = bench_distill.table(results, task)
    assert (row["n"], row["distill_min"], row["selected_step"]) == (3, 2.0, "75/50")
    assert row["mean"] == pytest.approx(0.2)
    assert "distill_min" not in cut and cut["selected_step"] == "50"


def test_distill_benchmark_trains_students_on_every_export_of_a_saved_summary(
        data_dir, tmp_path, monkeypatch):
    """--exports: the stored summary, as `farzi-fast export` writes it out (hard ids, or each
    position's K most likely ids renormalised), is what each export's students train on."""
    from farzi_fast.distillation.summary import FarziData

    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch)
    device = torch.device("cpu")
    with pytest.raises(FileNotFoundError, match="no summary to export"):
        bench_distill.run(task, cfg, [0], "default", 1, tmp_path, "t", device,
                          with_baselines=False, exports=True)
    bench_distill.run(task, cfg, [0], "default", 1, tmp_path, "t", device, with_baselines=False)
    soft = FarziData.load(tmp_path / "farzi-ml-100k-default-seed0.pt").soft().detach()
    trained_on = {}
    monkeypatch.setattr(bench_distill, "distill", None)  # nothing is distilled again
    monkeypatch.setattr(bench_distill, "evaluate_source",
                        lambda results, task, cfg, source, data, *a, **k:
                        trained_on.setdefault(source, data))
    bench_distill.run(task, cfg, [0], "default", 1, tmp_path, "t", device,
                      with_baselines=False, exports=True)
    assert set(trained_on) == {f"FarziData exported: {how}" for how in bench_distill.EXPORTS}
    assert torch.equal(trained_on["FarziData exported: greedy"], soft.argmax(-1))
    sample = trained_on["FarziData exported: sample"]
    assert sample.shape == soft.shape[:2] and bool((soft.gather(-1, sample[..., None]) > 0).all())
    for k in (10, 100):
        top = trained_on[f"FarziData exported: top {k}"]
        kept = soft.topk(k, -1)
        assert bool(((top > 0).sum(-1) == k).all())
        torch.testing.assert_close(top.gather(-1, kept.indices),
                                   kept.values / kept.values.sum(-1, keepdim=True))


def test_distill_benchmark_run_cut_mid_distillation_continues_exactly(data_dir, tmp_path,
                                                                      monkeypatch, capsys):
    bench_distill, task, cfg = tiny_distill_benchmark(data_dir, monkeypatch, outer_steps=3,
                                                      eval_students=["gru"])
    monkeypatch.setattr(bench_distill, "CHECKPOINT_EVERY", 1)

    def run(out):
        return bench_distill.run(task, cfg, [0], "default", 1, out, "t", torch.device("cpu"),
                                 with_baselines=False)

    whole = run(tmp_path / "whole")
    distill = bench_distill.distill

    def cut_after_step_2(*args, callback, **kwargs):
        def cutting(step, loss, farzi):
            callback(step, loss, farzi)
            if step == 2:  # step 1's checkpoint is on disk, step 2's is not
                raise KeyboardInterrupt
        return distill(*args, callback=cutting, **kwargs)

    monkeypatch.setattr(bench_distill, "distill", cut_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert (tmp_path / "cut" / "farzi-ml-100k-default-seed0.ckpt").exists()
    monkeypatch.setattr(bench_distill, "distill", distill)
    capsys.readouterr()
    resumed = run(tmp_path / "cut")
    steps = re.findall(r"outer step (\d+/\d+),", capsys.readouterr().out)
    assert steps == ["2/3", "3/3"]  # step 1 was not redone
    assert [r["mean"] for r in resumed] == [r["mean"] for r in whole]
    assert {r["source"] for r in resumed} == {"FarziData", bench_distill.START}
    rows = [json.loads(line) for line in (tmp_path / "cut" / "t.jsonl").read_text().splitlines()]
    assert [r.get("resumed") for r in rows if r["source"] == "FarziData"] == [True]
    for name in ("whole", "cut"):  # the summaries, bit for bit; nothing left behind
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == ["farzi-ml-100k-default-seed0.pt", "t.jsonl"], files
    whole_latent, cut_latent = (
        torch.load(tmp_path / name / "farzi-ml-100k-default-seed0.pt", weights_only=True)["latent"]
        for name in ("whole", "cut"))
    assert torch.equal(whole_latent, cut_latent)


def test_meta_gradient_benchmark_control_agrees_and_each_source_of_noise_bites(data_dir):
    from benchmarks import bench_meta_gradient
    from farzi_fast.distillation.presets import preset
    from farzi_fast.training.tasks import load_task

    cfg = preset("ml-100k", "cpu").settings() | dict(
        max_len=8, size=(3, 4), dim=8, inner_steps=2, pretrain_steps=3, teacher_steps=5,
        outer_batch=16)
    task = load_task("ml-100k", data_dir, cfg["max_len"])
    result = bench_meta_gradient.run(task, cfg, "default", 3, 0, torch.device("cpu"))
    cosines = {row["condition"]: row["cos_mean"] for row in result["rows"]}
    assert list(cosines) == list(bench_meta_gradient.CONDITIONS)
    control = cosines.pop("nothing (control)")
    assert control == pytest.approx(1.0, abs=1e-12)  # the same loop twice: the same gradient
    assert all(c < 0.999 for c in cosines.values()), cosines  # dropout masks included
