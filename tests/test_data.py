"""Datasets and eval sets: manifests, checksums, split recipes, own sets. No network; never reads ../shared.

    python -m pytest tests/test_data.py -q

Fake dataset files with the real layouts are built in tmp_path; their sha256s reach prepare() through a
manifest override (harness.data.with_checksums), never by switching verification off.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.data import (
    EvalSet, list_datasets, list_eval_sets, load_eval_set, load_manifest, load_split, prepare, with_checksums,
    zh_form,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def put(data_dir: Path, name: str, files: dict[str, str | bytes]):
    """Write fake files at data_dir/<name>/<path>; return the real manifest with their checksums."""
    sums = {}
    for rel, content in files.items():
        raw = content.encode("utf-8") if isinstance(content, str) else content
        (data_dir / name).mkdir(parents=True, exist_ok=True)
        (data_dir / name / rel).write_bytes(raw)
        sums[rel] = hashlib.sha256(raw).hexdigest()
    return with_checksums(load_manifest(name), sums)


def fake_sms(n_ham: int = 45, n_spam: int = 15, bad_line: int | None = None) -> str:
    lines = []
    for i in range(n_ham + n_spam):
        label = "spam" if i % 4 == 3 and sum(x.startswith("spam") for x in lines) < n_spam else "ham"
        text = f"WIN a prize {i}! txt CLAIM to 8{i:04d}" if label == "spam" else f"see you at {i} o'clock, love"
        lines.append(f"{label}\t{text}")
    # a quoted field that spans three lines, as pd.read_csv reads source lines 5082-5084 of the real file
    lines[20:23] = ['ham\t"Keep calm, b\'coz', "ham\tmiddle line", 'ham\tend of quote" and more']
    if bad_line:
        lines[bad_line - 1] = "ham this line has no tab"
    return "\n".join(lines) + "\n"


def ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


# ------------------------------------------------------------------------------------------------ sms_spam
def test_sms_splits_are_the_books_and_deterministic(tmp_path, cache, monkeypatch):
    m = put(tmp_path / "data", "sms_spam", {"SMSSpamCollection": fake_sms()})
    paths = prepare("sms_spam", tmp_path / "data", manifest=m)
    splits = {s: load_split("sms_spam", s) for s in paths}
    # balanced: 15 spam + 15 ham, 70/10/20 with int() cuts as in the book
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [21, 3, 6]
    balanced = splits["train"] + splits["validation"] + splits["test"]
    assert sum(r["label"] == "spam" for r in balanced) == sum(r["label"] == "ham" for r in balanced) == 15
    # the same messages, in the same order, as the book's own pandas code on the same file
    import pandas as pd
    df = pd.read_csv(tmp_path / "data/sms_spam/SMSSpamCollection", sep="\t", header=None, names=["Label", "Text"])
    n = int((df["Label"] == "spam").sum())
    book = pd.concat([df[df["Label"] == "ham"].sample(n, random_state=123), df[df["Label"] == "spam"]])
    book = book.sample(frac=1, random_state=123).reset_index(drop=True)
    assert [r["label"] for r in balanced] == list(book["Label"])
    # texts differ only where read_csv strips quotes or merges lines; ours keep each source line as it is
    assert [r["text"] for r in balanced if '"' not in r["text"]] == [t for t in book["Text"] if "\n" not in t]
    # natural: every source line exactly once, each balanced split nested in its natural split
    natural = {s: splits[f"natural_{s}"] for s in ("train", "validation", "test")}
    all_ids = [i for rs in natural.values() for i in ids(rs)]
    assert sorted(all_ids) == sorted(f"sms-{k}" for k in range(1, 61))
    for s in ("train", "validation", "test"):
        assert set(ids(splits[s])) <= set(ids(natural[s]))
    spam_share = sum(r["label"] == "spam" for r in natural["test"]) / len(natural["test"])
    assert 0.15 < spam_share < 0.35  # the file's share is 25%
    for family in (("train", "validation", "test"), ("natural_train", "natural_validation", "natural_test")):
        seen = [i for s in family for i in ids(splits[s])]
        assert len(seen) == len(set(seen)), f"an item is in two splits of {family}"
    assert not [p for p in (cache / "data/sms_spam").iterdir() if p.name.startswith(".")], "temp files left"
    # same seed, fresh cache -> same ids in the same order
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache2"))
    prepare("sms_spam", tmp_path / "data", manifest=m)
    assert {s: ids(load_split("sms_spam", s)) for s in paths} == {s: ids(rs) for s, rs in splits.items()}


def test_sms_malformed_line_names_file_and_line(tmp_path, cache):
    m = put(tmp_path, "sms_spam", {"SMSSpamCollection": fake_sms(bad_line=7)})
    with pytest.raises(UserError, match=r"SMSSpamCollection:7: malformed"):
        prepare("sms_spam", tmp_path, manifest=m)
    assert not (cache / "data" / "sms_spam").exists()


def test_sha256_mismatch_caches_nothing(tmp_path, cache, capsys):
    put(tmp_path, "sms_spam", {"SMSSpamCollection": fake_sms()})
    with pytest.raises(UserError, match="sha256 mismatch"):
        prepare("sms_spam", tmp_path)  # the real manifest's checksum, a fake file
    assert not (cache / "data" / "sms_spam").exists()
    # the same through the CLI: exit 2 and the reason, no traceback
    from harness.__main__ import COMMANDS
    assert main(COMMANDS, ["data", "prepare", "sms_spam", "--data-dir", str(tmp_path)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (cache / "data" / "sms_spam").exists()


def test_data_dir_without_the_file_names_the_expected_path(tmp_path, cache):
    with pytest.raises(UserError) as e:
        prepare("instruction", tmp_path)
    assert str(tmp_path / "instruction" / "instruction-data.json") in str(e.value)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_extracts_and_verifies(http_dir, tmp_path, cache):
    www, base = http_dir
    text = fake_sms().encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme", "fake")
        z.writestr("SMSSpamCollection", text)
    (www / "sms.zip").write_bytes(buf.getvalue())
    m = load_manifest("sms_spam")
    spec = dataclasses.replace(m.files[0], url=f"{base}/sms.zip", sha256=hashlib.sha256(text).hexdigest())
    good = dataclasses.replace(m, files=(spec,))
    bad = with_checksums(good, {spec.path: "0" * 64})
    with pytest.raises(UserError, match="sha256 mismatch"):
        prepare("sms_spam", manifest=bad)
    assert not (cache / "data" / "sms_spam").exists()
    assert not [p for p in (cache / "downloads" / "sms_spam").rglob("*") if p.is_file()]
    paths = prepare("sms_spam", manifest=good)
    assert len(load_split("sms_spam", "test")) == 6 and set(paths) == set(m.splits)
    assert (cache / "downloads" / "sms_spam" / "SMSSpamCollection").read_bytes() == text


def test_download_archive_with_several_files(http_dir, cache):
    import tarfile
    www, base = http_dir
    texts = {f"sonnet_{s}.txt": sonnet(i) + "\n" for i, s in enumerate(("train", "valid", "test"))}
    with tarfile.open(www / "data.tgz", "w:gz") as t:
        for rel, text in texts.items():
            info = tarfile.TarInfo(f"data/{rel}")
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    arch_sha = hashlib.sha256((www / "data.tgz").read_bytes()).hexdigest()
    m = load_manifest("poems_en")
    files = tuple(dataclasses.replace(f, url=f"{base}/data.tgz", archive_sha256=arch_sha,
                                      sha256=hashlib.sha256(texts[f.path].encode()).hexdigest()) for f in m.files)
    prepare("poems_en", manifest=dataclasses.replace(m, files=files))
    assert [len(load_split("poems_en", s)) for s in ("train", "validation", "test")] == [1, 1, 1]
    bad = dataclasses.replace(m, files=tuple(dataclasses.replace(f, archive_sha256="1" * 64) for f in files))
    import shutil
    shutil.rmtree(cache)
    with pytest.raises(UserError, match="sha256 mismatch.*archive"):
        prepare("poems_en", manifest=bad)
    assert not (cache / "data" / "poems_en").exists()
    assert not [p for p in (cache / "downloads").rglob("*") if p.is_file()]


def test_offline_download_says_to_pass_data_dir(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = load_manifest("instruction")
    m = dataclasses.replace(m, files=(dataclasses.replace(m.files[0], url=f"http://127.0.0.1:{port}/x.json"),))
    with pytest.raises(UserError, match=r"--data-dir DIR.*DIR/instruction/instruction-data.json"):
        prepare("instruction", manifest=m)
    assert not (cache / "data" / "instruction").exists()


# ------------------------------------------------------------------------------------------------ instruction
def test_instruction_split_in_file_order(tmp_path, cache):
    entries = [{"instruction": f"Task {i}", "input": "x" if i % 3 else "", "output": f"Answer {i}"} for i in range(40)]
    m = put(tmp_path, "instruction", {"instruction-data.json": json.dumps(entries, indent=1)})
    prepare("instruction", tmp_path, manifest=m)
    train, test, val = (load_split("instruction", s) for s in ("train", "test", "validation"))
    assert (len(train), len(test), len(val)) == (34, 4, 2)  # int(40*0.85), int(40*0.1), rest
    assert [r["instruction"] for r in train + test + val] == [e["instruction"] for e in entries]
    assert load_eval_set("instruction:test").task == "chat"


def test_instruction_bad_json_names_line(tmp_path, cache):
    m = put(tmp_path, "instruction", {"instruction-data.json": '[\n {"instruction": "a", "input": "", "output": "b"}\n'
                                                               ' {"instruction": "c"}\n]'})
    with pytest.raises(UserError, match=r"instruction-data.json:3: invalid JSON"):
        prepare("instruction", tmp_path, manifest=m)
    assert not (cache / "data" / "instruction").exists()


# ------------------------------------------------------------------------------------------------ poems
# Lines made up for these tests (traditional characters that OpenCC t2s changes: 東風綠樹細過長橋...).
L5 = ["東風吹綠樹", "細雨過長橋", "山鳥鳴深谷", "江雲照舊門", "歸馬踏春泥", "孤燈夢故鄉", "晚鐘聲自遠", "明月照書樓"]
L7 = ["東風吹綠滿長橋", "細雨無聲過舊門", "江上歸帆連遠樹", "山中孤鳥夢雲來",
      "夜深燈火照書樓", "晚鐘聲裏馬蹄輕", "明月千里照故鄉", "春來花開滿城東"]


def couplets(lines: list[str]) -> list[str]:
    return [f"{a}，{b}。" for a, b in zip(lines[::2], lines[1::2])]


def test_zh_form_counts_characters_per_line():
    assert all(len(x) == 5 for x in L5) and all(len(x) == 7 for x in L7)
    assert zh_form("".join(couplets(L5[:4]))) == "五言绝句"
    assert zh_form("".join(couplets(L7[:4]))) == "七言绝句"
    assert zh_form("".join(couplets(L5))) == "五言律诗"
    assert zh_form("".join(couplets(L7))) == "七言律诗"
    assert zh_form("".join(couplets(L5[:6]))) is None                  # 6 lines
    assert zh_form("".join(couplets([L5[0], L7[1], L5[2], L5[3]]))) is None  # mixed lengths
    assert zh_form("東風吹{風兪}樹，細雨過長橋。山鳥鳴深谷，江雲照舊門。") is None
    assert zh_form("東風吹綠□，細雨過長橋。山鳥鳴深谷，江雲照舊門。") is None
    assert zh_form("東風吹綠樹，細雨過長橋？山鳥鳴深谷，江雲照舊門。") is None
    assert zh_form("東風吹綠樹。細雨過長橋，山鳥鳴深谷，江雲照舊門。") is None  # ，。 must alternate


def test_poems_zh_keeps_regular_forms_and_converts_to_simplified(tmp_path, cache):
    import opencc
    def poem(i, paragraphs, title="春日書懷"):
        uuid = f"00000000-0000-0000-0000-{i:012d}"
        return {"author": "無名氏", "title": title, "paragraphs": paragraphs, "id": uuid}
    poems = [
        poem(1, couplets(L5[:4])), poem(2, couplets(L7[:4])), poem(3, couplets(L5)), poem(4, couplets(L7), title=""),
        poem(5, couplets(L5[:6])), poem(6, couplets([L5[0], L7[1], L5[2], L5[3]])),
        poem(7, ["東風吹{風兪}樹，細雨過長橋。", "山鳥鳴深谷，江雲照舊門。"]),
        poem(8, couplets(L5[:4])),  # duplicate text of poem 1
    ]
    m = put(tmp_path, "poems_zh", {"poet.tang.0.json": json.dumps(poems, ensure_ascii=False, indent=2)})
    prepare("poems_zh", tmp_path, manifest=m)
    recs = [r for s in ("train", "validation", "test") for r in load_split("poems_zh", s)]
    assert sorted(r["form"] for r in recs) == sorted(["五言绝句", "七言绝句", "五言律诗", "七言律诗"])
    assert sorted(ids(recs)) == [f"tang-00000000-0000-0000-0000-{i:012d}" for i in (1, 2, 3, 4)]
    t2s = opencc.OpenCC("t2s").convert
    for r in recs:
        for key in ("poem", "title", "author", "prompt"):
            assert t2s(r[key]) == r[key], f"{key} not simplified: {r[key]}"
        lines = r["poem"].split("\n")
        assert [x[-1] for x in lines] == ["，", "。"] * (len(lines) // 2)
        assert zh_form(r["poem"].replace("\n", "")) == r["form"]
        assert r["prompt"] == f"写一首{r['form']}，题目：{r['title']}" and r["lang"] == "zh"
    first = next(r for r in recs if r["id"].endswith("1"))
    assert first["poem"].startswith("东风吹绿树，\n细雨过长桥。") and first["author"] == "无名氏"
    assert next(r for r in recs if r["id"].endswith("4"))["title"] == "无题"
    meta = json.loads((cache / "data/poems_zh/meta.json").read_text(encoding="utf-8"))
    assert meta["skipped"] == {"irregular": 3, "duplicate": 1, "changed_by_conversion": 0}


def sonnet(i: int, n_lines: int = 14) -> str:
    return " ".join(f"line {k} of sonnet {i} , o love <eos>" for k in range(n_lines))


def test_poems_en_dedup_across_splits(tmp_path, cache, monkeypatch):
    files = {"sonnet_train.txt": "\n".join([sonnet(1), sonnet(2), sonnet(1)]) + "\n",
             "sonnet_valid.txt": "\n".join([sonnet(2), sonnet(3)]) + "\n",
             "sonnet_test.txt": "\n".join([sonnet(3), sonnet(4), sonnet(5)]) + "\n"}
    m = put(tmp_path, "poems_en", files)
    prepare("poems_en", tmp_path, manifest=m)
    splits = {s: load_split("poems_en", s) for s in ("train", "validation", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 2, "validation": 1, "test": 2}
    assert "sonnet 3" in splits["validation"][0]["poem"]  # kept in the first split it appears in
    for r in splits["test"]:
        assert len(r["poem"].split("\n")) == 14 and "<eos>" not in r["poem"]
        assert (r["lang"], r["form"], r["title"], r["prompt"]) == ("en", "sonnet", "", "Write a sonnet.")
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "other"))
    prepare("poems_en", tmp_path, manifest=m)
    assert {s: ids(load_split("poems_en", s)) for s in splits} == {s: ids(r) for s, r in splits.items()}


def test_poems_en_malformed_line(tmp_path, cache):
    m = put(tmp_path, "poems_en", {"sonnet_train.txt": sonnet(1) + "\n", "sonnet_valid.txt": sonnet(2) + "\n",
                                   "sonnet_test.txt": sonnet(3) + "\n" + sonnet(4, n_lines=13) + "\n"})
    with pytest.raises(UserError, match=r"sonnet_test.txt:2: malformed sonnet.*got 13"):
        prepare("poems_en", tmp_path, manifest=m)
    assert not (cache / "data" / "poems_en").exists()


# ------------------------------------------------------------------------------------------------ manifests, eval sets
@pytest.mark.parametrize("name", list_datasets())
def test_every_manifest_loads(name):
    m = load_manifest(name)
    assert m.name == name and m.files and all(f.url.startswith("https://") for f in m.files)
    assert len({f.sha256 for f in m.files}) == len(m.files)


def test_manifest_set():
    assert list_datasets() == ["instruction", "poems_en", "poems_zh", "sms_spam"]
    zh = load_manifest("poems_zh")
    assert [f.path for f in zh.files] == [f"poet.tang.{i}.json" for i in range(0, 58000, 1000)]


def test_own_eval_sets():
    sms = load_eval_set("sms_own")
    assert sms.task == "spam" and len(sms.items) >= 40
    assert 0.4 <= sum(i["label"] == "spam" for i in sms.items) / len(sms.items) <= 0.6
    chat = load_eval_set("instructions_own")
    assert chat.task == "chat" and len(chat.items) >= 30
    assert any(i["input"] for i in chat.items) and all(i["output"].strip() for i in chat.items)
    poems = load_eval_set("poems_own")
    assert poems.task == "poem" and len(poems.items) >= 24
    zh = [i for i in poems.items if i["lang"] == "zh"]
    assert {i["form"] for i in zh} == {"五言绝句", "七言绝句", "五言律诗", "七言律诗"}
    assert all(i["prompt"] == f"写一首{i['form']}，题目：{i['title']}" for i in zh)
    assert {i["form"] for i in poems.items if i["lang"] == "en"} == {"sonnet", "free verse"}
    all_ids = [i["id"] for es in (sms, chat, poems) for i in es.items]
    assert len(all_ids) == len(set(all_ids))


def test_eval_set_names_are_looked_up(cache):
    names = list_eval_sets()
    assert {"sms_own", "instructions_own", "poems_own", "sms_spam:test", "poems_zh:test"} <= set(names)
    for bad in ("nope", "../eval_sets/own/sms_own", "sms_spam:../../etc", "sms_spam:nope"):
        with pytest.raises(UserError, match="available: .*sms_own"):
            load_eval_set(bad)
    with pytest.raises(UserError, match=r"python -m harness data prepare sms_spam --data-dir"):
        load_eval_set("sms_spam:test")


def test_eval_set_validates_items():
    with pytest.raises(UserError, match="duplicate"):
        EvalSet("x", "spam", [{"id": "a", "text": "t", "label": "ham"}, {"id": "a", "text": "u", "label": "ham"}])
    with pytest.raises(UserError, match="label"):
        EvalSet("x", "spam", [{"id": "a", "text": "t", "label": "maybe"}])
    with pytest.raises(UserError, match="output"):
        EvalSet("x", "chat", [{"id": "a", "instruction": "t", "input": ""}])
