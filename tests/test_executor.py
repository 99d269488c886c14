"""Grids in parallel: the same records as the sequential run, each model trained once."""
import multiprocessing

import pytest

from purilib.experiment import run_table
from purilib.training import train_backdoored_model

GRID = dict(attacks=["BadNets", "Blend"], defenses=["No defense", "NFT"], device="cpu")  # bit-equal on the CPU
NUMBERS = ["acc", "asr", "ra", "acc_before", "asr_before", "weights_digest", "defense_config", "clean_checksum"]


def _numbers(records):
    return records.sort_values(["attack", "defense"]).reset_index(drop=True)[["attack", "defense"] + NUMBERS]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return run_table("nft-table1", "smoke", output_dir=tmp_path_factory.mktemp("sequential"), progress=False, **GRID)


def test_two_workers_give_the_records_of_the_sequential_run(sequential, tmp_path):
    parallel = run_table("nft-table1", "smoke", output_dir=tmp_path, progress=False, workers=2, **GRID)
    assert len(parallel) == 4
    assert _numbers(parallel).equals(_numbers(sequential))
    rerun = run_table("nft-table1", "smoke", output_dir=tmp_path, progress=False, workers=2, **GRID)
    assert _numbers(rerun).equals(_numbers(sequential))  # nothing recomputed differently


def test_a_table_over_networks_and_amounts_runs_in_one_pool_with_the_sequential_records(tmp_path):
    """AWM Table 1's grids (two networks x two amounts of clean data on smoke): two workers, one per model,
    give the sequential run's records, in its order.  The models are the awm_table1 notebook's."""
    grid = dict(attacks=["BadNets"], defenses=["FT"], progress=False, device="cpu")
    sequential = run_table("awm-table1", "smoke", output_dir=tmp_path / "one", workers=1, **grid)
    parallel = run_table("awm-table1", "smoke", output_dir=tmp_path / "two", workers=2, **grid)
    keys = ["network", "clean_per_class", "defense"]
    assert len(parallel) == 2 * 2 and parallel[keys].equals(sequential[keys])
    assert list(dict.fromkeys(parallel["network"])) == ["resnet18", "vgg16_bn"]
    assert list(dict.fromkeys(parallel["clean_per_class"])) == [10, 1]
    assert parallel[NUMBERS].equals(sequential[NUMBERS])


def test_ray_gives_the_records_of_the_sequential_run(sequential, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, ignore_reinit_error=True, include_dashboard=False)
    try:
        parallel = run_table("nft-table1", "smoke", output_dir=tmp_path, progress=False, executor="ray",
                             workers=2, **GRID)
    finally:
        ray.shutdown()
    assert _numbers(parallel).equals(_numbers(sequential))


def _train(cache, queue):
    import purilib.training as training
    trainings, fit = [], training.fit
    training.fit = lambda *args, **kwargs: trainings.append(1) or fit(*args, **kwargs)
    _, manifest = train_backdoored_model(attack="Blend", seed=7, device="cpu", cache_dir=cache, dataset="synthetic",
                                         dataset_kwargs=dict(num_train=300, num_test=100), width=0.125, epochs=1,
                                         batch_size=32)
    queue.put((manifest["weights_digest"], len(trainings)))


def test_two_processes_asking_for_one_model_train_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_train, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(300)
    results = [queue.get(timeout=5) for _ in processes]
    assert len({digest for digest, _ in results}) == 1  # both got the one model
    assert sorted(trained for _, trained in results) == [0, 1]  # one trained it, the other waited and loaded it
    assert len(list(tmp_path.glob("models/*/manifest.json"))) == 1
