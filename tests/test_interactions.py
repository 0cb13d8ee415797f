"""A user's own interaction log in, readable synthetic sequences out: the loader (CSV/TSV,
Parquet, RecBole .inter; MovieLens through it gives exactly the built-in loader's sequences),
its refusals, and the whole loop distill -> export -> inspect -> train -> evaluate on a small
CSV written here."""

import csv
import json

import pytest
import torch

pd = pytest.importorskip("pandas", reason="pandas is in the [data] and [test] extras")

from farzi_fast.cli import main as cli  # noqa: E402
from farzi_fast.data import load_movielens_100k  # noqa: E402
from farzi_fast.data.interactions import load_interactions  # noqa: E402
from farzi_fast.distillation.summary import FarziData  # noqa: E402


def movielens_frame(data_dir):
    return pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t",
                       names=["user_id", "item_id", "rating", "timestamp"])


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "inter"])
def test_movielens_through_every_format_gives_the_same_sequences(data_dir, tmp_path, kind):
    frame = movielens_frame(data_dir)
    path = tmp_path / f"ml.{kind}"
    if kind == "parquet":
        frame.to_parquet(path)
    elif kind == "inter":  # RecBole's atomic file: typed header, tab-separated
        frame.columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_csv(path, sep="," if kind == "csv" else "\t", index=False)
    got, want = load_interactions(path), load_movielens_100k(data_dir)
    assert got.num_items == want.num_items and len(got.sequences) == len(want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.sequences, want.sequences))
    assert got.vocabulary == want.vocabulary and got.dropped_users == 0


def write_log(path, sep=","):
    """12 users with string ids, 9 items, a title and an extra column; u00's two events at the
    same time (file order must win), u11 with only 2 events (dropped)."""
    rows = [("user", "item", "time", "title", "rating")]
    for u in range(12):
        events = 2 if u == 11 else 5
        for k in range(events):
            item = f"item-{(u + 2 * k) % 9}"
            rows.append((f"u{u:02d}", item, 100 * k if u else 0, f"Title {item}", "4"))
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter=sep).writerows(rows)
    return rows


def test_string_ids_ties_extra_columns_and_short_users(tmp_path):
    path = tmp_path / "log.csv"
    rows = write_log(path, sep=";")  # the delimiter is sniffed
    data = load_interactions(path, title_col="title")
    assert data.dropped_users == 1 and len(data.sequences) == 11
    assert data.vocabulary == ["<pad>"] + [f"item-{i}" for i in range(9)]
    first = [data.vocabulary[i] for i in data.sequences[0].tolist()]
    assert first == [r[1] for r in rows[1:6]]  # u00: all at time 0, kept in file order
    assert data.titles[1] == "Title item-0"


@pytest.mark.parametrize("case, message", [
    ("missing", "no item column: tried .* found \\['user', 'thing', 'time'\\]"),
    ("empty", "is empty"),
    ("header-only", "no rows of interactions"),
    ("short", "no user has the 3 interactions"),
    ("times", "column 'time' must hold numbers.*'yesterday'"),
    ("named", "no column 'who' \\(--user-col\\); the columns are"),
])
def test_bad_logs_get_one_clear_line(tmp_path, case, message):
    path = tmp_path / "log.csv"
    text = {"missing": "user,thing,time\na,b,1\n", "empty": "", "header-only": "user,item,time\n",
            "short": "user,item,time\na,x,1\na,y,2\nb,x,1\n",
            "times": "user,item,time\na,x,1\na,y,yesterday\na,z,3\n",
            "named": "user,item,time\na,x,1\n"}[case]
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_interactions(path, user_col="who" if case == "named" else None)


def test_own_log_distill_export_inspect_train_evaluate(tmp_path, capsys):
    log, run = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    source = ["--interactions", str(log), "--title-col", "title"]
    small = ["--max-len", "6", "--dim", "8", "--layers", "1"]
    assert cli(["distill", *source, *small, "--out", str(run), "--size", "3x4",
                "--inner-steps", "2", "--outer-steps", "2", "--pretrained-students", "1",
                "--pretrain-steps", "4", "--validate-every", "0", "--outer-batch", "8",
                "--quiet"]) == 0
    assert "1 users with fewer than 3 interactions dropped" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["dropped_users"] == 1
    assert cli(["distill", *source, *small, "--out", str(run), "--size", "3x4",
                "--inner-steps", "2", "--outer-steps", "3", "--pretrained-students", "1",
                "--pretrain-steps", "4", "--validate-every", "0", "--outer-batch", "8",
                "--quiet", "--resume"]) == 0  # a log's run resumes, further
    capsys.readouterr()
    summary = FarziData.load(run / "farzi.pt")
    assert summary.vocabulary[1] == "item-0" and summary.titles[1] == "Title item-0"
    assert summary.padding_id == 0

    assert cli(["export", str(run), "--format", "csv", "--sample", "2", "--out",
                str(tmp_path / "s.csv")]) == 0
    exported = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(exported) == 2 * 3 * 4
    assert all(r["item"] in summary.vocabulary for r in exported)
    assert all(r["title"] == f"Title {r['item']}" or r["item"] == "<pad>" for r in exported)
    capsys.readouterr()
    assert cli(["export", str(run)]) == 0  # the default, greedy, says what --top keeps
    default = capsys.readouterr()
    assert "hard ids teach far less" in default.err and "--top K" in default.err
    assert cli(["export", str(run), "--greedy"]) == 0
    greedy = capsys.readouterr()
    assert greedy.out == default.out and greedy.err == ""  # chosen: no note
    greedy = [json.loads(line) for line in greedy.out.splitlines()]
    assert len(greedy) == 12 and all(0 < r["probability"] <= 1 for r in greedy)
    assert cli(["export", str(run), "--top", "3"]) == 0  # the distributions, truncated
    top = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    probs = summary.soft().detach()
    assert [(r["sequence"], r["position"], r["rank"]) for r in top] == [
        (s, p, k) for s in range(3) for p in range(4) for k in range(3)]
    assert [r["id"] for r in top] == probs.topk(3, -1).indices.flatten().tolist()
    assert [r["id"] for r in top if r["rank"] == 0] == [r["id"] for r in greedy]
    assert cli(["export", str(run), "--top", str(summary.vocab_size + 1)]) == 2
    assert f"--top must be at most the summary's {summary.vocab_size} ids" in \
        capsys.readouterr().err

    assert cli(["inspect", str(run), "--interactions", str(log)]) == 0
    report = capsys.readouterr().out
    assert "sequence 0 (" in report and "entropy per position" in report
    assert 0 <= json.loads(report.splitlines()[-1])["popularity"]["real_mass_on_top10pct"] <= 1
    assert (run / "inspect.png").stat().st_size > 1000

    student = tmp_path / "student.pt"
    assert cli(["train", *source, *small, "--on", "farzi", "--farzi", str(run / "farzi.pt"),
                "--steps", "3", "--out", str(student)]) == 0
    assert "HR@10" in json.loads(capsys.readouterr().out)["test"]
    assert cli(["evaluate", *source, "--student", str(student)]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"valid", "test"}


def test_a_summary_of_other_data_is_refused(tmp_path, capsys):
    log, other = tmp_path / "log.csv", tmp_path / "other.csv"
    write_log(log)
    other.write_text(log.read_text().replace("item-3", "item-x"))
    run = tmp_path / "run"
    assert cli(["distill", "--interactions", str(log), "--max-len", "6", "--dim", "8",
                "--layers", "1", "--out", str(run), "--size", "2x3", "--inner-steps", "1",
                "--outer-steps", "1", "--pretrained-students", "1", "--pretrain-steps", "2",
                "--validate-every", "0", "--quiet"]) == 0
    capsys.readouterr()
    student = tmp_path / "student.pt"
    assert cli(["train", "--interactions", str(other), "--max-len", "6", "--dim", "8",
                "--layers", "1", "--on", "farzi", "--farzi", str(run / "farzi.pt"), "--out",
                str(student)]) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after the note on dropped users
    assert error.startswith("farzi-fast: error:") and "distilled from other data" in error
    assert not student.exists()
    assert cli(["distill", "--interactions", str(tmp_path / "missing.csv"), "--out",
                str(tmp_path / "r2")]) == 2
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "r2").exists()


# --- text ----------------------------------------------------------------------------------

def write_corpus(path, lines=60):
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
    path.write_text("\n".join(" ".join(words[(i * 3 + k) % 10] for k in range(6))
                              for i in range(lines)) + "\n")


def test_text_word_level_holds_out_lines_and_tokenizers_load(tmp_path):
    from farzi_fast.data.text import load_text

    corpus = tmp_path / "train.txt"
    write_corpus(corpus)
    data = load_text(corpus)
    assert "<eos>" in data.vocab and "<unk>" in data.vocab
    assert len(data.valid) == len(data.test) == 3 * 7  # 5% of 60 lines each, 6 words + <eos>
    assert len(data.train) == 54 * 7
    (tmp_path / "valid.txt").write_text("the zebra sat\n")
    data = load_text(corpus, valid=tmp_path / "valid.txt")
    assert data.unknown_in["valid"] == 1 and len(data.test) == 3 * 7
    bpe = load_text(corpus, bpe_vocab=40)
    assert len(bpe.vocab) <= 40 and bpe.train.max() < len(bpe.vocab)
    from tokenizers import Tokenizer, models, pre_tokenizers  # a user's own tokenizer file

    own = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1, "cat": 2, "<eos>": 3}, "<unk>"))
    own.pre_tokenizer = pre_tokenizers.Whitespace()
    own.save(str(tmp_path / "tokenizer.json"))
    data = load_text(corpus, tokenizer=tmp_path / "tokenizer.json")
    assert data.vocab == ["<unk>", "the", "cat", "<eos>"] and data.unknown_in["train"] > 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a tokenizers JSON file"):
        load_text(corpus, tokenizer=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="too few to hold out"):
        (tmp_path / "one.txt").write_text("just one line\n")
        load_text(tmp_path / "one.txt")


def test_own_text_distill_and_export_in_words(tmp_path, capsys):
    corpus, run = tmp_path / "train.txt", tmp_path / "run"
    write_corpus(corpus)
    assert cli(["distill", "--text", str(corpus), "--max-len", "6", "--dim", "8", "--heads", "1",
                "--layers", "1", "--out", str(run), "--size", "2x4", "--inner-steps", "1",
                "--outer-steps", "1", "--pretrained-students", "1", "--pretrain-steps", "2",
                "--validate-every", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["export", str(run), "--greedy"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    words = set(corpus.read_text().split()) | {"<eos>", "<unk>"}
    assert len(rows) == 8 and all(r["item"] in words for r in rows)


def movielens_in_time_order(data_dir):
    """MovieLens-100K's events as (user, item) in each user's time order, ties in file order,
    users in the built-in loader's order."""
    frame = movielens_frame(data_dir).reset_index()
    frame = frame.sort_values(["user_id", "timestamp", "index"])
    return [(str(u), [str(i) for i in events["item_id"]])
            for u, events in frame.groupby("user_id", sort=True)]


@pytest.mark.parametrize("form", ["sequences", "pairs"])
def test_the_fields_sequence_files_give_the_tables_sequences(data_dir, tmp_path, form):
    """One user a line (`user item item ...`) and one event a line (`user item`), as the
    SASRec/ICLRec repositories ship them: sniffed, ids as given, order as in the file."""
    users = movielens_in_time_order(data_dir)
    path = tmp_path / f"ml-{form}.txt"
    with open(path, "w") as f:
        for user, items in users:
            if form == "sequences":
                f.write(" ".join([user, *items]) + "\n")
            else:
                f.writelines(f"{user} {item}\n" for item in items)
    from farzi_fast.data.interactions import sniff_format

    assert sniff_format(path) == form
    got, want = load_interactions(path), load_movielens_100k(data_dir)
    assert got.vocabulary == want.vocabulary and got.num_items == want.num_items
    assert all(torch.equal(a, b) for a, b in zip(got.sequences, want.sequences))
    assert load_interactions(path, format=form).num_users == 943


@pytest.mark.parametrize("form, text, message", [
    ("sequences", "u1 a b c\nu2\nu3 a b c\n", r"log.txt:2: expected `user item item \.\.\.`"),
    ("sequences", "u1 a b c\nu1 d e f\n", r"log.txt:2: user 'u1' has a line already"),
    ("pairs", "u1 a\nu1 b\nu1 c d\n", r"log.txt:3: expected `user item`"),
    ("sequences", "u1 a\nu2 b c\n", "no user has the 3 interactions"),
])
def test_bad_lines_of_sequence_files_are_named(tmp_path, form, text, message):
    path = tmp_path / "log.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_interactions(path, format=form)


def test_a_table_option_on_a_sequence_file_is_refused(tmp_path, capsys):
    path = tmp_path / "log.txt"
    path.write_text("u1 a b c\nu2 b c d\n")
    with pytest.raises(ValueError, match="--user-col name a table's columns; this file is "
                                         "read as --format sequences"):
        load_interactions(path, user_col="user")
    with pytest.raises(ValueError, match="--format must be one of"):
        load_interactions(path, format="lines")
    assert cli(["inspect", str(tmp_path), "--interactions", str(path), "--format",
                "pairs"]) == 2  # no summary there; refused before reading anything else
    assert "no summary there" in capsys.readouterr().err


def test_every_training_event_is_a_target_once_in_the_full_data(data_dir):
    """The full data: windows of max_len + 1 covering each user's training events, every
    event after a user's first a target exactly once (the first too, with no history, in a
    left-padded earliest window, as in a left-padded last-L row); the last-L rows miss most."""
    movielens = load_movielens_100k(data_dir)
    train = [s[:-2] for s in movielens.sequences]
    for max_len in (7, 50):
        windows = movielens.train_windows(max_len)
        assert windows.shape[1] == max_len + 1
        targets = windows[:, 1:]
        want = torch.cat([s[1:] for s in train])
        # each user's earliest window holds end = n - k * max_len items, 1 < end <= max_len + 1
        padded = torch.stack([s[0] for s in train
                              if (len(s) - 1) % max_len != 0 and len(s) > 1])
        got = torch.bincount(targets[targets != 0], minlength=movielens.num_items + 1)
        assert torch.equal(got, torch.bincount(want, minlength=movielens.num_items + 1)
                           + torch.bincount(padded, minlength=movielens.num_items + 1))
    last = movielens.train_batch(50)
    assert int((last[:, 1:] != 0).sum()) < 0.5 * sum(len(s) - 1 for s in train)


def test_a_user_sample_keeps_the_catalogue(data_dir):
    movielens = load_movielens_100k(data_dir)
    sample = movielens.sample_users(100, seed=3)
    assert sample.num_users == 100 and sample.num_items == movielens.num_items
    assert sample.sequences[0] is movielens.sequences[[i for i, s in enumerate(
        movielens.sequences) if s is sample.sequences[0]][0]]
    assert movielens.sample_users(5000) is movielens
    assert [len(s) for s in movielens.sample_users(100, seed=3).sequences] == \
        [len(s) for s in sample.sequences]  # the same users for the same seed


def test_a_log_too_small_or_a_run_too_large_is_refused_before_it_starts(tmp_path, capsys,
                                                                       monkeypatch):
    log, run = tmp_path / "log.csv", tmp_path / "run"
    write_log(log)
    base = ["distill", "--interactions", str(log), "--max-len", "6", "--out", str(run)]
    assert cli(base + ["--size", "20x4"]) == 2
    assert "--size 20x4 asks for 20 synthetic sequences but the log has 11 users" in \
        capsys.readouterr().err
    from farzi_fast.cli.commands import distill as command

    monkeypatch.setattr(command, "available_bytes", lambda: 1e8)
    assert cli(base + ["--size", "3x4"]) == 2
    err = capsys.readouterr().err
    assert "needs about 0.4 GB at its peak" in err and "0.1 GB are available: lower " \
        "--outer-batch, --size or --max-len" in err
    assert not run.exists()
