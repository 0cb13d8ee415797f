"""Farzi: data loaders, metrics, students, the summary's files, distill() and its resume,
and the command line. Small configurations: these check behaviour, not the paper's numbers
(those are in the README's table, from benchmarks/bench_distill.py)."""

import json
import math

import pytest
import torch

from farzi_fast import FarziData, distill
from farzi_fast.cli import main as cli
from farzi_fast.data import load_movielens_100k, load_ptb
from farzi_fast.farzi.metrics import ranking_metrics
from farzi_fast.farzi.students import sasrec, transformer_lm


@pytest.fixture(scope="module")
def movielens(request):
    from .conftest import DATA_DIR

    if not (DATA_DIR / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found under {DATA_DIR}")
    return load_movielens_100k(DATA_DIR)


def tiny_student(data):
    torch.manual_seed(0)
    return sasrec(data.num_items, max_len=12, dim=16, heads=1, layers=1, dropout=0.1)


DISTILL = dict(size=(4, 6), latent_dim=4, inner_steps=3, pretrained_students=1,
               pretrain_steps=4, pretrain_every=2, outer_batch=32)


# --- data --------------------------------------------------------------------------------

def test_movielens_sequences_and_leave_one_out_split(movielens, data_dir):
    assert movielens.num_users == 943 and movielens.num_items == 1682
    assert sum(len(s) for s in movielens.sequences) == 100_000
    # user 1's events, ordered by time, straight from the file
    rows = [line.split("\t") for line in open(data_dir / "ml-100k" / "u.data")]
    user1 = sorted((int(t), i, int(item)) for i, (u, item, _, t) in enumerate(rows) if u == "1")
    assert movielens.sequences[0].tolist() == [item for _, _, item in user1]
    inputs, targets = movielens.split_inputs("valid", max_len=300)
    assert targets[0] == movielens.sequences[0][-2]
    assert inputs[0, -1] == movielens.sequences[0][-3] and (inputs[0] == 0).any()
    _, test_targets = movielens.split_inputs("test", max_len=300)
    assert test_targets[0] == movielens.sequences[0][-1]


def test_ptb_vocabulary_from_training_file(data_dir):
    data = load_ptb(data_dir)
    assert "<eos>" in data.vocab and "<unk>" in data.vocab
    assert len(data.valid) == 73_760 and len(data.test) == 82_430  # shared/data/README.md
    assert data.unknown_in["train"] == 0 and data.unknown_in["valid"] > 0  # partial train file
    first = open(data_dir / "ptb" / "ptb.train.txt").readline().split()
    assert [data.vocab[i] for i in data.train[: len(first) + 1]] == first + ["<eos>"]


def test_missing_files_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("FARZI_FAST_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="Looked in: .*nowhere.*grouplens"):
        load_movielens_100k(tmp_path)


def test_malformed_and_empty_files_are_refused(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t2\tthree\t4\n")
    with pytest.raises(ValueError, match="u.data:2: expected 4 tab-separated integers"):
        load_movielens_100k(tmp_path)
    (tmp_path / "u.data").write_text("\n")
    with pytest.raises(ValueError, match="no interactions"):
        load_movielens_100k(tmp_path)


# --- metrics -----------------------------------------------------------------------------

def test_full_ranking_metrics_by_hand():
    scores = torch.tensor([[9.0, 1.0, 5.0, 4.0, 3.0, 2.0],    # target 4 ranks 3rd of 1..5
                           [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])   # target 5 ranks 1st
    targets = torch.tensor([4, 5])
    history = torch.tensor([[0, 0], [0, 0]])
    m = ranking_metrics(scores, targets, history, k=10)
    assert m["HR@10"] == 1.0
    assert m["nDCG@10"] == pytest.approx((1 / math.log2(4) + 1.0) / 2)
    # items already in the history leave the ranking: item 2 and 3 no longer beat target 4
    m = ranking_metrics(scores, targets, torch.tensor([[2, 3], [0, 0]]), k=1)
    assert m["HR@1"] == 1.0
    assert ranking_metrics(scores, targets, history, k=2)["HR@2"] == 0.5


# --- students ----------------------------------------------------------------------------

def test_one_hot_soft_inputs_equal_hard_ids():
    torch.manual_seed(0)
    model = transformer_lm(13, max_len=7, dim=8, heads=2, layers=2, dropout=0.0).eval()
    ids = torch.randint(13, (3, 7))
    soft = torch.nn.functional.one_hot(ids, 13).float()
    assert torch.allclose(model(ids), model(soft), atol=1e-5)


def test_students_refuse_bad_shapes_and_sizes():
    model = transformer_lm(13, max_len=7, dim=8, heads=2, layers=1)
    with pytest.raises(ValueError, match="soft inputs must be batch x seq x 13"):
        model(torch.rand(2, 5, 12))
    with pytest.raises(ValueError, match="exceed max_len=7"):
        model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="dim"):
        transformer_lm(13, dim=0)


# --- the summary -------------------------------------------------------------------------

def test_farzi_data_soft_sample_save_load(tmp_path):
    data = FarziData(3, 5, 11, 4, temperature=0.5, generator=torch.Generator().manual_seed(0))
    soft = data.soft()
    assert soft.shape == (3, 5, 11) and torch.allclose(soft.sum(-1), torch.ones(3, 5))
    assert data.sample(torch.Generator().manual_seed(1)).shape == (3, 5)
    assert torch.equal(data.sample(greedy=True), soft.argmax(-1))
    data.save(tmp_path / "f.pt")
    from farzi_fast.farzi.summary import _umask

    assert (tmp_path / "f.pt").stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes
    back = FarziData.load(tmp_path / "f.pt")
    assert torch.equal(back.soft(), soft) and back.temperature == 0.5


def test_farzi_data_refuses_corrupt_foreign_and_code_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable FarziData"):
        FarziData.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a FarziData file"):
        FarziData.load(tmp_path / "foreign.pt")
    torch.save(Exploit(), tmp_path / "code.pt")  # unpickling would call os.system
    with pytest.raises(ValueError, match="not a readable FarziData"):
        FarziData.load(tmp_path / "code.pt")
    assert not (tmp_path / "pwned").exists()


class Exploit:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


@pytest.mark.parametrize("args", [(0, 5, 11, 4), (3, 5, 11, -1), (3, 5, 0, 4)])
def test_farzi_data_refuses_non_positive_sizes(args):
    with pytest.raises(ValueError, match="must be a positive int"):
        FarziData(*args)


# --- distill -----------------------------------------------------------------------------

def test_distill_resumes_exactly_after_a_kill(movielens, tmp_path):
    train = movielens.train_batch(12)
    straight = distill(tiny_student(movielens), train, outer_steps=4, **DISTILL)

    class Killed(Exception):
        pass

    def kill_at_3(step, loss, farzi):
        if step == 3:
            raise Killed

    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        distill(tiny_student(movielens), train, outer_steps=4, checkpoint=checkpoint,
                checkpoint_every=2, callback=kill_at_3, **DISTILL)
    resumed = distill(tiny_student(movielens), train, outer_steps=4, checkpoint=checkpoint,
                      checkpoint_every=2, resume=True, **DISTILL)
    assert torch.equal(resumed.latent, straight.latent)
    assert torch.equal(resumed.decoder, straight.decoder)


def test_distill_refuses_a_different_configuration_on_resume(movielens, tmp_path):
    train = movielens.train_batch(12)
    checkpoint = tmp_path / "ckpt.pt"
    distill(tiny_student(movielens), train, outer_steps=1, checkpoint=checkpoint, **DISTILL)
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match="different configuration .*latent_dim"):
        distill(tiny_student(movielens), train, outer_steps=2, checkpoint=checkpoint,
                resume=True, **(DISTILL | dict(latent_dim=5)))
    assert checkpoint.read_bytes() == before


def test_distill_refuses_bad_input(movielens):
    train = movielens.train_batch(12)
    with pytest.raises(ValueError, match="vocabulary"):
        distill(transformer_lm(50, max_len=12), train, outer_steps=1, **DISTILL)
    with pytest.raises(ValueError, match="size"):
        distill(tiny_student(movielens), train, outer_steps=1, **(DISTILL | dict(size=(0, 6))))
    with pytest.raises(ValueError, match="inner_steps"):
        distill(tiny_student(movielens), train, outer_steps=1, **(DISTILL | dict(inner_steps=0)))


def test_distill_lowers_the_meta_loss(movielens):
    losses = []
    # every real row in the outer batch (no sampling noise), so the trend is the summary's
    distill(tiny_student(movielens), movielens.train_batch(12), outer_steps=12,
            callback=lambda step, loss, farzi: losses.append(loss),
            **(DISTILL | dict(inner_steps=5, inner_lr=0.05, outer_lr=0.1, outer_batch=2000,
                              pretrained_students=0)))
    assert losses[-1] < losses[0] - 0.2  # measured 7.54 -> 7.11


# --- command line ------------------------------------------------------------------------

def test_cli_distill_resume_train_evaluate(movielens, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--dataset", "ml-100k", "--data", str(data_dir), "--max-len", "12", "--dim",
              "16", "--layers", "1"]
    distill_args = ["distill", *common, "--out", str(out), "--size", "4x6", "--latent-dim", "4",
                    "--inner-steps", "2", "--pretrained-students", "1", "--pretrain-steps", "2",
                    "--checkpoint-every", "1", "--eval-every", "2", "--train-steps", "5",
                    "--outer-batch", "32", "--quiet"]
    assert cli(distill_args + ["--outer-steps", "2"]) == 0
    with pytest.raises(SystemExit, match="already holds a run"):
        cli(distill_args + ["--outer-steps", "3"])
    with pytest.raises(SystemExit, match="different configuration"):
        cli(distill_args + ["--outer-steps", "3", "--resume", "--inner-steps", "3"])
    assert cli(distill_args + ["--outer-steps", "3", "--resume"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    assert "HR@10" in log[1]["valid"]
    assert (out / "meta_loss.png").stat().st_size > 1000
    assert FarziData.load(out / "farzi.pt").size == (4, 6)
    capsys.readouterr()
    student = tmp_path / "student.pt"
    assert cli(["train", *common, "--on", "farzi", "--farzi", str(out / "farzi.pt"), "--steps",
                "3", "--out", str(student)]) == 0
    assert "HR@10" in json.loads(capsys.readouterr().out)["test"]
    assert cli(["evaluate", "--dataset", "ml-100k", "--data", str(data_dir), "--student",
                str(student)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"valid", "test"}
