"""The GPU campaign's runner rehearsed on the CPU with the smoke profile: the same queue logic (skip what is
recorded, stop at the budget, bring the records back, render from them), so that no GPU minute is spent on
a runner bug."""
import json
import tarfile

import pytest

from purilib import campaign

QUEUE = '''
[[unit]]
id = "t1-BadNets"
table = "nft-table1"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "FT"], ["NFT"]]
estimate_s = 5

[[unit]]
id = "too-long"
table = "nft-table1"
profile = "gpu"
attacks = ["Blend"]
groups = [["No defense"]]
estimate_s = 100000

[[unit]]
id = "study-resnet18"
table = "nft-study"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "released"]]
estimate_s = 5
model = "resnet18"

[[unit]]
id = "defenses-BadNets"
table = "defenses"
profile = "gpu"
attacks = ["BadNets"]
groups = [["No defense", "NGF"]]
estimate_s = 5
'''


def test_the_committed_queue_names_only_rows_and_columns_its_tables_have():
    units = campaign.load_queue()
    assert len(units) > 50 and len({u.id for u in units}) == len(units)
    assert units[0].profile == "paper" and units[0].table == "nft-study"  # the protocols issue's first
    assert all(u.estimate_s > 0 and u.groups for u in units)


def test_a_bad_queue_is_refused_in_one_line(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text(QUEUE.replace('["NFT"]', '["MagicFix"]'))
    with pytest.raises(ValueError, match="nft-table1 has no column 'MagicFix'"):
        campaign.load_queue(path)
    path.write_text(QUEUE.replace('id = "too-long"', 'id = "t1-BadNets"'))
    with pytest.raises(ValueError, match="used twice"):
        campaign.load_queue(path)


def test_the_runner_skips_what_is_recorded_stops_at_the_budget_and_brings_back_records(tmp_path):
    queue = tmp_path / "q.toml"
    queue.write_text(QUEUE)
    units = campaign.load_queue(queue, profile="smoke")
    assert {u.profile for u in units} == {"smoke"}
    results, out = tmp_path / "results", tmp_path / "out"
    lines = []
    summary = campaign.run(units, out, budget=300, processes=2, device="cpu", results=results, log=lines.append)
    assert summary["finished"] == ["t1-BadNets", "study-resnet18", "defenses-BadNets"]
    assert summary["left"] == ["too-long"]
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
                         log=lines.append)
    assert again["already_recorded"] == ["t1-BadNets", "study-resnet18", "defenses-BadNets"] and again["cells"] == 0
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
                           log=lines.append)
    assert stopped["left"] == ["too-long"]  # its estimate does not fit: never started
    short = [campaign.Unit(**{**units[1].__dict__, "estimate_s": 0})]
    stopped = campaign.run(short, tmp_path / "out4", budget=1.0, processes=1, device="cpu", results=results,
                           log=lines.append)
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
    def unit(name, groups, estimate):
        return campaign.Unit(id=name, table="nft-table1", profile="gpu", attacks=("BadNets",),
                             groups=tuple(("FT",) for _ in range(groups)), estimate_s=estimate)
    a, b, huge = unit("a", 2, 100), unit("b", 2, 100), unit("huge", 1, 1000)
    # two processes: b waits for a's slots, and then no longer fits in the 150 s of the command
    assert campaign.plan_commands([a, b, huge], budget=150, processes=2) == ([["a"], ["b"]], ["huge"])
    assert campaign.plan_commands([a, b], budget=150, processes=4) == ([["a", "b"]], [])
    # three processes: b's second group starts only when a ends, and would be killed at the budget
    assert campaign.plan_commands([a, b], budget=150, processes=3) == ([["a"], ["b"]], [])
    chosen, unfit = campaign.startable([(huge, 0), (a, 0), (a, 1)], free=1, now=0, budget=150, started=set())
    assert chosen == [(a, 0)] and unfit == [huge]  # a smaller unit further down goes first
