"""The GPU campaign's runner rehearsed on the CPU with the smoke profile: the same queue logic (skip what is
recorded, stop at the budget, bring the records back, render from them), so that no GPU minute is spent on
a runner bug."""
import json
import os
import tarfile

import pytest

from purilib import campaign

QUEUE = '''
start_s = 1
model_s = { gpu = 5 }
rehearsal = { model_s = 5, cell_s = 1 }
seconds = { "No defense" = 1, FT = 1, NFT = 1, NGF = 1, released = 1 }

[[unit]]
id = "t1-BadNets"
table = "nft-table1"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "FT"], ["NFT"]]

[[unit]]
id = "too-long"
table = "nft-table1"
profile = "gpu"
attacks = ["Blend"]
groups = [["No defense"]]
model_s = 100000

[[unit]]
id = "study-resnet18"
table = "nft-study"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "released"]]
model = "resnet18"

[[unit]]
id = "defenses-BadNets"
table = "defenses"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "NGF"]]
model = "resnet18"
'''


def test_the_committed_queue_names_only_rows_and_columns_its_tables_have():
    units = campaign.load_queue()
    assert len(units) > 50 and len({u.id for u in units}) == len(units)
    assert units[0].profile == "paper" and units[0].table == "nft-study"  # the protocols issue's first
    assert all(u.model_s > 0 and len(u.group_s) == len(u.groups) and u.models for u in units)
    # the same row of two tables is one model (trained once in a command); FIP Figure 1's keeps snapshots
    models = {u.id: u.models for u in units}
    assert models["t1-gpu-BadNets"] == models["defenses-gpu-BadNets"] == models["fip-table6-gpu-BadNets"]
    assert models["t1-gpu-BadNets"] != models["t1-gpu-Blend"] and models["t1-gpu-BadNets"] != models["t1-paper-BadNets"]
    assert models["fip-figure1-gpu-BadNets"] != models["t1-gpu-BadNets"]
    # every unit is a request its profile accepts (a GPU minute is never spent on a refusal); on the smoke
    # rehearsal, AWM Table 1's 50 and 100 clean images per class are left, with the reason
    assert [u.id for u in units if campaign.why_not_here(u) not in ("", "needs sklearn, missing here")] == []
    smoke = {u.id: campaign.why_not_here(u) for u in campaign.load_queue(profile="smoke")}
    assert "the smoke profile reserves 10 clean images per class" in smoke["awm-gpu-vgg16_bn-Blend-100"]
    assert smoke["awm-gpu-vgg16_bn-Blend-10"] in ("", "needs sklearn, missing here")


def test_a_bad_queue_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "q.toml"
    path.write_text(QUEUE.replace('["NFT"]', '["MagicFix"]'))
    with pytest.raises(ValueError, match="nft-table1 has no column 'MagicFix'"):
        campaign.load_queue(path)
    path.write_text(QUEUE.replace('id = "too-long"', 'id = "t1-BadNets"'))
    with pytest.raises(ValueError, match="used twice"):
        campaign.load_queue(path)
    path.write_text(QUEUE)
    campaign._main(["list", "--queue", str(path), "--select", "t1-", "--results", str(tmp_path)])
    listed = capsys.readouterr().out.splitlines()
    assert "t1-BadNets" in listed[0] and listed[1].startswith("1 of 1 units left")
    with pytest.raises(SystemExit, match="no unit of the queue starts with 'nope'"):
        campaign._main(["list", "--queue", str(path), "--select", "nope", "--results", str(tmp_path)])
    path.write_text(QUEUE.replace('NGF = 1, ', ''))
    with pytest.raises(ValueError, match=r"no estimate \(seconds\) for NGF"):
        campaign.load_queue(path)


def test_the_runner_skips_what_is_recorded_stops_at_the_budget_and_brings_back_records(tmp_path, smoke_model):
    import shutil

    from purilib import settings
    queue = tmp_path / "q.toml"
    queue.write_text(QUEUE)
    units = campaign.load_queue(queue, profile="smoke")
    assert {u.profile for u in units} == {"smoke"}
    results, out = tmp_path / "results", tmp_path / "out"
    # a cache of its own (the runner plans by what the cache holds; the run-wide one's depends on the order the
    # tests ran in) holding the smoke BadNets model, as an earlier command on the machine would have left it: so
    # t1-BadNets fits, though its model's estimate alone would exceed the budget
    units[0] = campaign.Unit(**{**units[0].__dict__, "model_s": 1e5})
    lines, cache = [], tmp_path / "cache"
    key = smoke_model("BadNets")[1]["key"]
    shutil.copytree(settings.cache_dir() / "models" / key, cache / "models" / key)
    summary = campaign.run(units, out, budget=300, processes=2, device="cpu", results=results, cache_dir=cache,
                           log=lines.append)
    assert summary["finished"] == ["t1-BadNets", "study-resnet18", "defenses-BadNets"]
    assert summary["left"] == ["too-long"]
    # the resnet18 model it trained, offered to the run-wide cache (trained with the profile's threads: the same
    # weights whichever process trains them), where the executor's tests load it instead of training it again
    from purilib.training import one_writer
    for folder in (cache / "models").iterdir():
        shared = settings.cache_dir() / "models" / folder.name
        with one_writer(shared):
            if not (shared / "manifest.json").exists():
                shutil.copytree(folder, shared, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
    # t1-BadNets' model is in the cache: no job trains it; the defenses table's row on resnet18 is the same model
    # as the study's: trained once, by one job
    assert any("1 of their models are in the cache already" in line for line in lines)
    trainers = [line.split("started ")[1] for line in lines if "started" in line and "its model" in line]
    assert trainers == ["study-resnet18 its model"]
    # each job's seconds beside its estimate: what a GPU run brings back to correct the queue's
    jobs = campaign.against_estimates(summary, units)
    assert sorted((j["unit"], j["job"]) for j in jobs) == [
        ("defenses-BadNets", "group 1"), ("study-resnet18", "group 1"), ("study-resnet18", "model"),
        ("t1-BadNets", "group 1"), ("t1-BadNets", "group 2")]
    assert all(j["exit"] == 0 and j["seconds"] > 0 and j["estimate_s"] > 0 for j in jobs)
    assert summary["cells"] == 7 and json.loads((out / "campaign.json").read_text())["finished"] == summary["finished"]
    with tarfile.open(out / "records.tar.gz") as tar:
        names = tar.getnames()
    assert "nft-table1/smoke/records/BadNets__NFT__seed0.json" in names
    assert any(n.startswith("manifests/") for n in names)  # the models' manifests travel too
    # back here: the records into the results folder, each touched table rendered from them
    touched = campaign.unpack(out / "records.tar.gz", results, render=True, papermill=False, log=lines.append)
    assert sorted(touched) == [("defenses", "smoke"), ("nft-study", "smoke"), ("nft-table1", "smoke")]
    table = (results / "nft-table1" / "smoke" / "table.md").read_text()
    assert "| BadNets | NFT |" in table and "| BadNets | FT |" in table
    assert (results / "README.md").exists()  # the index, refreshed
    study = (results / "nft-study" / "smoke" / "table.csv").read_text()
    assert "resnet18" in study and "released" in study  # another network than the profile's: rendered as such
    plan = campaign.renderable("nft-table1", "smoke", results)
    assert (plan["rows"], plan["columns"], plan["model"]) == (["BadNets"], ["No defense", "FT", "NFT"], None)
    # a second run finds them recorded and runs nothing of them
    again = campaign.run(units, tmp_path / "out2", budget=300, processes=2, device="cpu", results=results,
                         cache_dir=cache, log=lines.append)
    assert again["already_recorded"] == ["t1-BadNets", "study-resnet18", "defenses-BadNets"] and again["cells"] == 0
    # both models are in the cache now, for a later command on this machine (too-long's was never trained)
    assert campaign.cached_models(units, cache) == set(units[0].models) | set(units[2].models) == \
        set(units[0].models) | set(units[3].models)
    # a row is one model: records of the same row from other weights (trained again elsewhere) replace it
    # whole, the earlier cells set aside instead of mixed into the row
    folder = results / "nft-table1" / "smoke" / "records"
    retrained = json.loads((folder / "BadNets__NFT__seed0.json").read_text())
    retrained["weights_digest"] = "0123456789abcdef"
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "BadNets__NFT__seed0.json").write_text(json.dumps(retrained))
    with tarfile.open(tmp_path / "again.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "again" / "BadNets__NFT__seed0.json", arcname="nft-table1/smoke/records/BadNets__NFT__seed0.json")
    campaign.unpack(tmp_path / "again.tar.gz", results, render=False, log=lines.append)
    assert sorted(p.name for p in folder.glob("*.json")) == ["BadNets__NFT__seed0.json"]
    assert len(list((folder / "superseded").glob("*.json"))) == 2 and "moved to records/superseded" in lines[-1]
    assert not campaign.is_done(units[0], results)  # the row must be run again, whole
    for path in (folder / "superseded").glob("*.json"):  # put back by hand: a row of two models is refused
        path.replace(folder / path.name)
    from purilib.experiment import run_table
    with pytest.raises(ValueError, match="2 different models"):
        run_table("nft-table1", "smoke", attacks=["BadNets"], defenses=["No defense", "FT", "NFT"],
                  from_records=True, output_dir=results / "nft-table1" / "smoke")
    # a unit still running at the budget is stopped; what it finished would still come back
    stopped = campaign.run([units[1]], tmp_path / "out3", budget=1.0, processes=1, device="cpu", results=results,
                           cache_dir=cache, log=lines.append)
    assert stopped["left"] == ["too-long"]  # its estimate does not fit: never started
    short = [campaign.Unit(**{**units[1].__dict__, "model_s": 0, "group_s": (0,)})]
    stopped = campaign.run(short, tmp_path / "out4", budget=1.0, processes=1, device="cpu", results=results,
                           cache_dir=cache, log=lines.append)
    assert stopped["partial"] == ["too-long"] and stopped["groups"]["too-long"][0][1] == "killed at the budget"
    assert (tmp_path / "out4" / "records.tar.gz").exists()


def test_unpack_refuses_a_member_outside_the_results(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    payload = tmp_path / "x.json"
    payload.write_text("{}")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../etc/x.json")
    with pytest.raises(ValueError, match="refusing member"):
        campaign.unpack(archive, tmp_path / "results", render=False)


def test_a_runner_stopped_from_outside_stops_its_groups_and_still_packs(tmp_path):
    """SIGTERM (a command's time limit, a Ctrl-C): the groups are stopped, campaign.json and the archive written."""
    import signal
    import subprocess
    import sys
    import time
    queue = tmp_path / "q.toml"
    queue.write_text(QUEUE)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "purilib", "campaign", "run", "--queue", str(queue), "--profile",
                                "smoke", "--results", str(tmp_path / "results"), "--out", str(out), "--device", "cpu",
                                "--processes", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:  # until its first group has started
        if "started" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    summary = json.loads((out / "campaign.json").read_text())
    assert "interrupted" in rest and summary["partial"] == ["t1-BadNets"]
    assert summary["groups"]["t1-BadNets"][0][1] == "interrupted" and (out / "records.tar.gz").exists()


def test_the_plan_follows_the_runners_rule_for_what_to_start():
    def unit(name, model, groups=2, model_s=50, group_s=50, snapshots=None):  # model: the row's, as models_of
        return campaign.Unit(id=name, table="nft-table1", profile="gpu", attacks=("BadNets",),
                             groups=tuple(("FT",) for _ in range(groups)), model_s=model_s,
                             group_s=(group_s,) * groups, models=(json.dumps([model, 0, {}, snapshots]),))
    a, b, huge = unit("a", "A"), unit("b", "B"), unit("huge", "H", model_s=1000)
    # models first: while a's and b's models train, no process waits on a lock; then their groups
    assert campaign.plan_commands([a, b, huge], budget=150, processes=2) == ([["a", "b"]], ["huge"])
    assert campaign.plan_commands([a, b], budget=149, processes=2) == ([["a"], ["b"]], [])
    # a row of another table on the same model trains nothing: one process runs a and it in 250 s
    shared, own = unit("shared", "A"), unit("own", "C")
    assert campaign.plan_commands([a, shared], budget=250, processes=1) == ([["a", "shared"]], [])
    assert campaign.plan_commands([a, own], budget=250, processes=1) == ([["a"], ["own"]], [])
    # a smaller unit further down goes in where a larger one does not fit
    big = unit("big", "D", model_s=200)
    assert campaign.plan_commands([a, big, own], budget=300, processes=1) == ([["a", "own"], ["big"]], [])
    # a model with snapshots and the same one without share a cache folder: never in one command
    plain, history = unit("plain", "P"), unit("history", "P", snapshots=2)
    assert campaign.plan_commands([plain, history], budget=1000, processes=4) == ([["plain"], ["history"]], [])
    # the commands of one session on one machine: a later one finds the models the earlier trained in its cache
    # (shared fits the second command's 100 s only so); the next session starts on a fresh machine
    assert campaign.plan_commands([a, shared, own], budget=(150, 100), processes=1) == ([["a"], ["shared"], ["own"]], [])
    assert campaign.plan_commands([a, own], budget=(150, 100), processes=1) == ([["a"], [], ["own"]], [])
    assert campaign.plan_commands([a, own], budget=(150, 100, 100), processes=1) == ([["a"], [], [], ["own"]], [])
    cached = campaign.Schedule([shared], budget=100, processes=1, trained=set(shared.models))
    assert cached.admit(0) == [] and cached.start(2) == [(shared, 0), (shared, 1)]  # no model job
    schedule = campaign.Schedule([a, shared], budget=250, processes=1)
    assert schedule.admit(0) == [] and schedule.start(1) == [(a, campaign.MODEL)]
    assert schedule.start(1) == []  # a's groups (and shared's) wait for its model
    schedule.trained(a, ok=True)
    assert schedule.start(2) == [(a, 0), (a, 1)]
    # a model that failed to train: the units that use it are dropped, their groups never start
    failed = campaign.Schedule([a, shared], budget=250, processes=1)
    failed.admit(0)
    assert failed.start(1) == [(a, campaign.MODEL)] and failed.trained(a, ok=False) == [a, shared]
    assert failed.start(4) == []


def test_a_probe_decides_which_loops_run_compiled_and_how_fast_they_are_estimated(tmp_path, monkeypatch, capsys):
    """campaign run --compile-from: a loop measured faster (x1.2 or more) and equal (its logits within 1% of
    how far purification moved them) runs compiled in the cells, its columns estimated faster by as much."""
    from purilib.cells import column_defense
    from purilib.profiles import get_profile
    from purilib.tables import get_table
    lines = [{"defense": "NFT", "current_s": 9.0, "compiled_s": 3.0, "compiled_ratio": 3.0, "logit_change": 2.0,
              "compiled_logit_diff": 0.01},
             {"defense": "NGF", "compiled_ratio": 4.0, "logit_change": 2.0, "compiled_logit_diff": 0.5},  # not equal
             {"defense": "FT", "compiled_ratio": 1.1, "logit_change": 2.0, "compiled_logit_diff": 0.0},  # not faster
             {"defense": "ANP", "current_s": 5.0}]  # not compiled
    assert campaign.accepted_compiles(lines) == {"NFT": 3.0}
    queue = tmp_path / "queue.toml"
    queue.write_text(QUEUE.replace("NFT = 1,", "NFT = 30,"))
    plain = {u.id: u for u in campaign.load_queue(queue)}["t1-BadNets"]
    faster = {u.id: u for u in campaign.load_queue(queue, speedups={"NFT": 3.0})}["t1-BadNets"]
    assert plain.group_s == (3, 31) and faster.group_s == (3, 11)  # start_s + cells: NFT's 30 s / 3
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setenv("PURILIB_COMPILE", "")  # restored (unset) after the test, whatever _main sets
    monkeypatch.setattr(campaign, "run", lambda units, *args, **kwargs: None)  # the decision only, not the run
    campaign._main(["run", "--queue", str(queue), "--out", str(tmp_path / "out"), "--compile-from", str(probe)])
    assert "compiled loops: NFT (x3.0 measured)" in capsys.readouterr().out
    assert os.environ["PURILIB_COMPILE"] == "NFT"  # what the groups' processes inherit
    table, smoke = get_table("nft-table1"), get_profile("smoke")
    assert column_defense(table, smoke, "NFT", device="cpu")[0].compile == "auto"  # compiled on CUDA only
    assert column_defense(table, smoke, "FT", device="cpu")[0].compile is False
